"""The training loop end to end on the tiny model: it runs, logs, checkpoints, resumes exactly
after SIGKILL, survives bad input, and feeds the video to every forward pass."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tempsamp.errors import RunStopped
from tempsamp.models import qwen_vl
from tempsamp.train import loop
from tempsamp.train.checkpoint import checkpoints, save_checkpoint
from tempsamp.train.config import load_config
from tempsamp.train.logger import read_metrics
from video_files import write_video

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread, here and in the subprocesses (OMP_NUM_THREADS=1): the tiny model's many
    small ops run several times faster than with threads competing for 2 shared cores, and a run in
    this process and one in a subprocess then do bitwise the same arithmetic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_data")
    rows = []
    for i, span in enumerate([(2.0, 5.0), (4.0, 7.5), (1.0, 3.0)]):
        write_video(root / f"v{i}.mp4", 8.0, span)
        rows.append({"video": f"v{i}.mp4", "duration": 8.0, "query": "when is the red square visible?", "spans": [list(span)]})
    rows.append({"video": "missing.mp4", "duration": 8.0, "query": "when is the blue circle visible?", "spans": [[1.0, 2.0]]})
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)  # not a decodable video
    rows.append({"video": "corrupt.mp4", "duration": 8.0, "query": "when is the green cat visible?", "spans": [[1.0, 2.0]]})
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    (root / "with_missing.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    (root / "with_bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def tiny_overrides(tiny_model_dir, data_dir, out, **extra):
    """key=value overrides of the tiny_cpu recipe: G = 4, 8 new tokens, 2 queries per step, 3 steps."""
    values = {
        "model": str(tiny_model_dir),
        "train_annotations": str(data_dir / "train.jsonl"),
        "dataset": "jsonl",
        "output_dir": str(out),
        "num_generations": 4,
        "max_new_tokens": 8,
        "queries_per_step": 2,
        "learning_rate": 1e-3,
        "min_pixels": 3136,
        "max_pixels": 3136,
        "total_pixels": 3136 * 32,
        "stages": [{"mode": "answer", "steps": 2}, {"mode": "cot", "steps": 1}],
        "save_every": 100,  # the last step is always saved
        "frame_cache": None,
    }
    values.update(extra)
    return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in values.items()]


def params(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def test_train_runs_logs_and_checkpoints(tiny_model_dir, data_dir, tmp_path):
    # spike_factor=0: every non-zero loss after the first counts as a spike (to see them logged)
    cfg = load_config("tiny_cpu", tiny_overrides(tiny_model_dir, data_dir, tmp_path / "run", save_every=1, spike_factor=0))
    out = loop.train(cfg)
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in ("reward/raw", "reward/shaped", "iou/top1_onpolicy", "iou/mean_onpolicy", "adv/offpolicy",
                "adv/frac_onpolicy_negative", "parse/failure_rate", "loss/kl", "loss/clip_fraction",
                "policy/entropy", "completion/length", "speed/tokens_per_second", "speed/step_seconds", "memory/peak_gb"):
        assert rows[-1][key] is not None, key
    assert rows[-1]["format/rate"] is not None and rows[0]["format/rate"] is None  # CoT stage only
    # the GT row scores (almost) full IoU and is not part of the on-policy averages
    assert rows[0]["reward/offpolicy"] > 0.95
    kept = checkpoints(out)
    assert [p.name for p in kept] == ["checkpoint-2", "checkpoint-3"]  # keep_last = 2
    from transformers import AutoModelForImageTextToText

    AutoModelForImageTextToText.from_pretrained(kept[-1] / "model")
    assert not list(out.glob(".checkpoint-*.tmp"))
    assert rows[-1]["memory/peak_gb"] > 0 and rows[-1]["policy/entropy"] > 0 and rows[-1]["groups"] == 2
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in events] == ["loss_spike", "loss_spike"] and rows[-1]["faults/loss_spikes"] == 2
    from tempsamp.cli import main

    assert main(["plot", str(out)]) == 0  # `tempsamp plot RUN_DIR`
    pngs = {p.name for p in (out / "plots").glob("*.png")}
    assert pngs >= {"reward.png", "iou.png", "advantage.png", "policy.png", "memory.png"}
    assert all((out / "plots" / name).read_bytes()[:4] == b"\x89PNG" for name in pngs)


def test_tempsamp_generates_one_fewer_and_appends_the_gt(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    asked = []
    real_generate = qwen_vl.generate_batch

    def spy(model, processor, batch, **kwargs):
        asked.append((batch["input_ids"].shape[0], kwargs["num_samples"]))
        return real_generate(model, processor, batch, **kwargs)

    monkeypatch.setattr(qwen_vl, "generate_batch", spy)
    for strategy, expected in (("shaping", 3), ("grpo", 4)):
        asked.clear()
        cfg = load_config("tiny_cpu", tiny_overrides(tiny_model_dir, data_dir, tmp_path / strategy, strategy=strategy,
                                                     stages=[{"mode": "answer", "steps": 1}]))
        loop.train(cfg)
        assert asked == [(2, expected)]  # the step's 2 queries in one generate call


def test_every_forward_carries_the_video_and_its_time_axis(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    """Reference, old-policy and policy forwards all carry the video; the GT row is scored with it;
    log-probs change with the pixels; video tokens sit on the time axis, not on 1-D positions."""
    calls = []
    real = qwen_vl.completion_logprobs

    def spy(model, batch, **kwargs):
        result = real(model, batch, **kwargs)
        with torch.no_grad():  # the same rows with other pixels
            other = dict(batch, pixel_values_videos=torch.rand_like(batch["pixel_values_videos"]) * 4 - 2)
            changed = real(model, other).detach()
            plain = real(model, batch).detach()
        positions = qwen_vl.rope_position_ids(model, batch)
        calls.append({"keys": set(batch), "plain": plain, "changed": changed, "batch": batch, "positions": positions})
        return result

    monkeypatch.setattr(qwen_vl, "completion_logprobs", spy)
    gt_texts = []
    real_offpolicy = loop.offpolicy_text
    monkeypatch.setattr(loop, "offpolicy_text", lambda *a: gt_texts.append(real_offpolicy(*a)) or gt_texts[-1])
    cfg = load_config("tiny_cpu", tiny_overrides(tiny_model_dir, data_dir, tmp_path / "run", beta=0.04,
                                                 updates_per_rollout=2, offpolicy_loss="luffy", stages=[{"mode": "answer", "steps": 1}]))
    loop.train(cfg)
    # 2 groups x (reference + old policy + 2 updates)
    assert len(calls) == 8
    from transformers import AutoConfig, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    gt_rows = [qwen_vl.completion_ids(processor, text) for text in gt_texts]
    tokens_per_second = AutoConfig.from_pretrained(tiny_model_dir).vision_config.tokens_per_second
    for call in calls:
        assert {"pixel_values_videos", "video_grid_thw", "second_per_grid_ts", "mm_token_type_ids"} <= call["keys"]
        batch, mask = call["batch"], call["batch"]["completion_mask"].bool()
        # the GT completion is one of the rows, scored in the same forward as the sampled ones
        completions = batch["input_ids"][:, -mask.shape[1]:]
        rows = [completions[r][mask[r]].tolist() for r in range(len(mask))]
        gt_row = next(r for r, ids in enumerate(rows) if ids in gt_rows)
        # other pixels, other log-probs: for every row, the GT's included
        for r in range(len(rows)):
            assert (call["plain"][r][mask[r]] - call["changed"][r][mask[r]]).abs().max() > 1e-5, (r, gt_row)
        # time-aware rotary positions: the temporal index of the video tokens steps by
        # tokens_per_second * second_per_grid_ts per grid slice (1 s per slice at 2 FPS)
        video = batch["mm_token_type_ids"][0] == 2
        grid_t, grid_h, grid_w = batch["video_grid_thw"][0].tolist()
        temporal = call["positions"][0, 0, video].reshape(grid_t, -1)[:, 0]
        step = tokens_per_second * float(batch["second_per_grid_ts"][0])
        assert step == 2.0
        assert (temporal - temporal[0]).tolist() == [int(k * step) for k in range(grid_t)]
        one_d = torch.arange(batch["input_ids"].shape[1])[video]
        assert not torch.equal(call["positions"][0, 0, video], one_d)


def test_missing_and_corrupt_videos_are_counted_not_fatal(tiny_model_dir, data_dir, tmp_path):
    cfg = load_config("tiny_cpu", tiny_overrides(tiny_model_dir, data_dir, tmp_path / "run",
                                                 train_annotations=str(data_dir / "with_bad.jsonl"), max_unreadable_fraction=0.5,
                                                 queries_per_step=5, stages=[{"mode": "answer", "steps": 1}]))
    out = loop.train(cfg)
    row = read_metrics(out)[-1]
    assert row["faults/bad_videos"] == 2 and row["groups"] == 3 and row["faults/skipped_steps"] == 0
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert sorted(e["kind"] for e in events) == ["bad_video", "bad_video"]
    messages = " ".join(e["message"] for e in events)
    assert "missing.mp4" in messages and "corrupt.mp4" in messages  # the file is named


def test_step_without_a_usable_video_is_skipped_and_still_checkpointed(tiny_small_vocab_model_dir, data_dir, tmp_path):
    (tmp_path / "only_missing.jsonl").write_text((data_dir / "with_missing.jsonl").read_text().splitlines()[-1] + "\n")
    cfg = load_config("tiny_cpu", tiny_overrides(tiny_small_vocab_model_dir, data_dir, tmp_path / "run",
                                                 train_annotations=str(tmp_path / "only_missing.jsonl"),
                                                 preflight_videos=0, max_skipped_fraction=1.0,  # let it skip
                                                 stages=[{"mode": "answer", "steps": 2}]))
    out = loop.train(cfg)
    events = [json.loads(line)["kind"] for line in (out / "events.jsonl").read_text().splitlines()]
    assert events == ["bad_video", "bad_video", "skipped_step"] * 2
    rows = read_metrics(out)  # the faults are logged; nothing else (nothing was trained)
    assert [(r["faults/skipped_steps"], r["faults/bad_videos"]) for r in rows] == [(1, 2), (2, 4)]
    assert all(set(r) == {"step"} | {k for k in r if k.startswith("faults/")} for r in rows)
    state = json.loads((checkpoints(out)[-1] / "state.json").read_text())
    assert state["step"] == 2 and state["counters"]["skipped_steps"] == 2 and state["counters"]["bad_videos"] == 4


def test_non_finite_step_is_skipped_not_applied(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    real = loop.grpo_loss

    def poisoned(logp, *args, **kwargs):
        loss, stats = real(logp, *args, **kwargs)
        return loss * float("nan"), stats

    monkeypatch.setattr(loop, "grpo_loss", poisoned)
    from tempsamp.train import scoring

    real_iou = scoring.iou_reward

    def nan_first(pred, gt):  # a reward that comes out NaN: set to 0 and counted
        reward = np.array(real_iou(pred, gt), dtype=float)
        reward[0] = np.nan
        return reward

    monkeypatch.setattr(scoring, "iou_reward", nan_first)
    cfg = load_config("tiny_cpu", tiny_overrides(tiny_model_dir, data_dir, tmp_path / "run", stages=[{"mode": "answer", "steps": 1}]))
    # every step skipped is more than max_skipped_fraction (0.1): the run stops, non-zero, saying why
    with pytest.raises(RunStopped, match=r"0 applied, 1 skipped \(no usable video 0, non-finite loss or gradient 1\)") as stopped:
        loop.train(cfg)
    assert stopped.value.exit_code == 1
    out = Path(cfg.output_dir)
    row = read_metrics(out)[-1]
    assert row["faults/skipped_steps"] == 1 and row["faults/nan_rewards"] == 2  # one per group
    assert row["loss/value"] is None  # NaN is logged as missing, not as a number
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in events] == ["skipped_step"]
    before, after = params(Path(tiny_model_dir)), params(checkpoints(out)[-1] / "model")
    for name, value in after.items():
        assert torch.equal(value, before[name]), name


def test_checkpoint_leftovers_are_ignored_and_pruned(tmp_path):
    class Dummy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(2))

        def save_pretrained(self, path, safe_serialization=True):
            from safetensors.torch import save_file

            Path(path).mkdir(parents=True)
            save_file({"w": self.w.detach()}, str(Path(path) / "model.safetensors"))

    model = Dummy()
    opt = torch.optim.AdamW(model.parameters())
    model.w.grad = torch.ones(2)
    opt.step()
    (tmp_path / ".checkpoint-9.tmp").mkdir()  # a crash mid-write
    (tmp_path / "checkpoint-7").mkdir()  # a directory without state.json is not a checkpoint
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, None, opt, {"counters": {}}, keep_last=2)
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-3"]
    assert not (tmp_path / ".checkpoint-9.tmp").exists()


def test_sigkill_then_resume_ends_with_the_same_parameters(tiny_model_dir, data_dir, tmp_path):
    steps = [{"mode": "answer", "steps": 3}, {"mode": "cot", "steps": 1}]
    reference = tmp_path / "uninterrupted"
    loop.train(load_config("tiny_cpu", tiny_overrides(tiny_model_dir, data_dir, reference, stages=steps, save_every=2)))

    killed = tmp_path / "killed"
    args = tiny_overrides(tiny_model_dir, data_dir, killed, stages=steps, save_every=2)
    cmd = [sys.executable, "-m", "tempsamp", "train", "tiny_cpu", *args]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (killed / "checkpoint-2").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "no checkpoint-2 within 300 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "checkpoint-4").exists()

    loop.train(load_config("tiny_cpu", args), resume=True)
    a, b = params(reference / "checkpoint-4" / "model"), params(killed / "checkpoint-4" / "model")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # resumed metrics continue the same curve
    ra, rb = read_metrics(reference), read_metrics(killed)
    assert [r["step"] for r in rb] == [r["step"] for r in ra]
    assert [r["reward/raw"] for r in rb] == [r["reward/raw"] for r in ra]


def test_lora_reference_is_the_base_model_with_the_adapter_off(tiny_small_vocab_model_dir, data_dir, tmp_path, monkeypatch):
    """With LoRA there is no second copy: the reference forward is the policy itself under
    disable_adapter(), and it scores exactly like the base model even after the adapter has learnt."""
    from peft.tuners.lora import LoraLayer

    calls = []
    real = qwen_vl.completion_logprobs

    def spy(model, batch, **kwargs):
        result = real(model, batch, **kwargs)
        layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
        logp = result[0] if isinstance(result, tuple) else result
        calls.append({"model": model, "adapter_off": all(m.disable_adapters for m in layers) and bool(layers),
                      "batch": batch, "logp": logp.detach()})
        return result

    monkeypatch.setattr(qwen_vl, "completion_logprobs", spy)
    cfg = load_config("tiny_cpu", tiny_overrides(tiny_small_vocab_model_dir, data_dir, tmp_path / "run", lora=True, lora_r=4,
                                                 lora_dropout=0.0, beta=0.04, gradient_checkpointing=True,
                                                 stages=[{"mode": "answer", "steps": 2}]))
    out = loop.train(cfg)
    assert len({id(c["model"]) for c in calls}) == 1  # one model object for policy and reference
    assert [c["adapter_off"] for c in calls] == [True, True, False, False] * 2  # per step: 2 references, 2 updates
    base, _ = qwen_vl.load_policy(str(tiny_small_vocab_model_dir))
    with torch.no_grad():
        expected = [real(base, c["batch"]) for c in calls]
    for call, want in zip(calls, expected):
        if call["adapter_off"]:
            torch.testing.assert_close(call["logp"], want, atol=1e-5, rtol=1e-5)
    second_step = calls[4:]
    assert max(float((c["logp"] - want).abs().max()) for c, want in zip(second_step, expected[4:]) if not c["adapter_off"]) > 1e-4
    assert (checkpoints(out)[-1] / "model" / "adapter_model.safetensors").exists()


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_one_training_step_on_other_families(family, data_dir, tmp_path, monkeypatch):
    """Qwen2-VL and Qwen3-VL train through the same adapter (tiny random models, small vocabulary)."""
    from tempsamp.models.tiny import TinySpec, ensure_tiny_model

    model_dir = ensure_tiny_model(spec=TinySpec(family=family, vocab="small"))
    gt_texts = []
    real_offpolicy = loop.offpolicy_text
    monkeypatch.setattr(loop, "offpolicy_text", lambda *a: gt_texts.append(real_offpolicy(*a)) or gt_texts[-1])
    cfg = load_config("tiny_cpu", tiny_overrides(model_dir, data_dir, tmp_path / "run", stages=[{"mode": "cot", "steps": 1}]))
    out = loop.train(cfg)
    row = read_metrics(out)[-1]
    # a CoT stage: the GT row is written in the CoT format (and so earns the format reward)
    from tempsamp.rewards import format_reward

    assert len(gt_texts) == 2 and all(t.startswith("<think>") for t in gt_texts) and format_reward(gt_texts).tolist() == [1, 1]
    assert row["faults/skipped_steps"] == 0 and row["loss/kl"] is not None and row["groups"] == 2
    before, after = params(Path(model_dir)), params(checkpoints(out)[-1] / "model")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_highlights_train_with_the_timestamp_reward_mixed_with_grounding(tiny_small_vocab_model_dir, data_dir, tmp_path, monkeypatch):
    """QVHighlights rows and grounding rows in one run: each scored by its own reward, the
    highlight GT row written as scored windows (and scoring as a good answer)."""
    qvh = {"qid": 7, "query": "a red square", "duration": 8.0, "vid": "v0", "relevant_windows": [[2.0, 6.0]],
           "relevant_clip_ids": [1, 2], "saliency_scores": [[4, 3, 4], [2, 2, 3]]}
    (tmp_path / "qvh.jsonl").write_text(json.dumps(qvh) + "\n")
    texts = []
    real_offpolicy = loop.offpolicy_text
    monkeypatch.setattr(loop, "offpolicy_text", lambda ex, mode, *rest: texts.append((ex.task, real_offpolicy(ex, mode, *rest))) or texts[-1][1])
    cfg = load_config("tiny_cpu", tiny_overrides(
        tiny_small_vocab_model_dir, data_dir, tmp_path / "run", dataset=None, videos=str(data_dir),
        train_annotations=[str(data_dir / "train.jsonl"), str(tmp_path / "qvh.jsonl")], queries_per_step=4,
        stages=[{"mode": "answer", "steps": 1}]))
    out = loop.train(cfg)
    row = read_metrics(out)[-1]
    assert row["groups"] == 4 and row["faults/bad_videos"] == 0
    assert {task for task, _ in texts} == {"grounding", "highlights"}
    highlight_gt = next(text for task, text in texts if task == "highlights")
    assert "2.0 to 6.0 (score" in highlight_gt
    from tempsamp.data.readers import load_examples
    from tempsamp.train.scoring import score_group

    (example,) = load_examples(tmp_path / "qvh.jsonl", videos=str(data_dir))
    gt_reward = score_group(example, [highlight_gt, "<answer> 0.0 to 1.0 (score 4) </answer>"], False).task
    assert gt_reward[0] > 0.9 and gt_reward[1] < 0.5  # the timestamp reward, not IoU, and the GT earns it


def test_resume_refuses_other_settings(tmp_path):
    cfg = load_config("tiny_cpu", [f"output_dir={tmp_path}"])
    checkpoint = tmp_path / "checkpoint-1"
    checkpoint.mkdir()
    (checkpoint / "state.json").write_text(json.dumps({"step": 1, "config": json.loads(json.dumps(cfg.to_dict()))}))
    loop.check_resume_config(checkpoint, cfg)  # same settings: fine
    loop.check_resume_config(checkpoint, load_config("tiny_cpu", [f"output_dir={tmp_path}", "save_every=7"]))
    with pytest.raises(ValueError, match="learning_rate"):
        loop.check_resume_config(checkpoint, load_config("tiny_cpu", [f"output_dir={tmp_path}", "learning_rate=0.5"]))


def test_stages_reach_the_prompt_and_the_temperature_reaches_sampling_and_every_logprob(tiny_small_vocab_model_dir, data_dir, tmp_path, monkeypatch):
    """The wiring through the real loop: each stage's prompt mode, the sampling temperature in
    generate and in every log-prob (policy, old, reference), and the GT think mask in CoT stages."""
    prompts, temperatures, sampled = [], [], []
    real_prompt, real_logprobs, real_generate = loop.prompt_text, qwen_vl.completion_logprobs, qwen_vl.generate_batch
    monkeypatch.setattr(loop, "prompt_text", lambda query, mode, **kw: prompts.append(mode) or real_prompt(query, mode, **kw))
    monkeypatch.setattr(qwen_vl, "completion_logprobs",
                        lambda *a, **kw: temperatures.append(kw.get("temperature", 1.0)) or real_logprobs(*a, **kw))
    monkeypatch.setattr(qwen_vl, "generate_batch", lambda *a, **kw: sampled.append(kw.get("temperature")) or real_generate(*a, **kw))
    masks = []
    real_update = loop.update
    monkeypatch.setattr(loop, "update", lambda cfg, model, ref, groups, *a, **k: masks.append([g.loss_masks[-1] for g in groups])
                        or real_update(cfg, model, ref, groups, *a, **k))
    cfg = load_config("tiny_cpu", tiny_overrides(
        tiny_small_vocab_model_dir, data_dir, tmp_path / "run", temperature=0.7, beta=0.04, updates_per_rollout=2,
        offpolicy_loss="luffy", stages=[{"mode": "answer", "steps": 1}, {"mode": "cot", "steps": 1}]))
    loop.train(cfg)
    assert prompts == ["answer", "answer", "cot", "cot"]
    assert sampled and set(sampled) == {0.7}
    assert temperatures and set(temperatures) == {0.7}
    assert masks[0] == [None, None] and all(m is not None and 0.0 in m for m in masks[1])


def test_rows_per_forward_packing_trains_like_one_group_per_forward(tiny_small_vocab_model_dir, data_dir, tmp_path):
    """Two groups with prompts of different lengths in one forward (rows_per_forward = 2 G): the same
    rewards, advantages, loss and (within float error) weights after two steps as one group per forward."""
    queries = ["when is the red square visible?", "at what moment does the small red square first appear on screen?"]
    rows = [{"video": f"v{i}.mp4", "duration": 8.0, "query": q, "spans": [[2.0, 5.0]]} for i, q in enumerate(queries)]
    (tmp_path / "two.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    runs = {}
    for packing in (0, 8):
        cfg = load_config("tiny_cpu", tiny_overrides(
            tiny_small_vocab_model_dir, data_dir, tmp_path / f"rows{packing}", rows_per_forward=packing, beta=0.04,
            train_annotations=str(tmp_path / "two.jsonl"), videos=str(data_dir), stages=[{"mode": "answer", "steps": 2}]))
        out = loop.train(cfg)
        runs[packing] = (read_metrics(out), params(out / "checkpoint-2" / "model"))
    (base, base_weights), (packed, packed_weights) = runs[0], runs[8]
    assert len(base) == len(packed) == 2
    for a, b in zip(base, packed):
        for key in ("reward/raw", "reward/shaped", "adv/offpolicy", "adv/frac_onpolicy_negative", "completion/length"):
            assert a[key] == b[key], key
        for key in ("loss/value", "loss/kl", "loss/clip_fraction", "policy/entropy"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-7), key
    assert base_weights.keys() == packed_weights.keys()
    # Float error only: a packed forward sums in another order (log-probs differ by ~1e-7), and
    # AdamW's first steps move a weight by about lr * sign(grad) (lr = 1e-3), so the few weights
    # whose gradient is near zero may move a little differently (measured: at most 4e-6, on fewer
    # than 1 in 10^4 weights); every other weight agrees within 1e-7.
    diffs = torch.cat([(base_weights[k] - packed_weights[k]).abs().flatten() for k in base_weights])
    assert float(diffs.max()) < 1e-5 and float((diffs > 1e-7).float().mean()) < 1e-4
    assert any(not torch.equal(base_weights[k], v) for k, v in params(Path(tiny_small_vocab_model_dir)).items())  # it trained
