"""Parity with the reference stack: what a released checkpoint saw in training, against what tempsamp feeds it.

The reference is the peers' stack run end to end (scripts/parity_reference.py, in the reference
environment that `make test-parity` builds: qwen-vl-utils fetch_video -> the released-era processor
-> the released-era model). The tempsamp side is the project's public path (``tempsamp_side``).
Both read the same random-weight checkpoint, written in the released format by the reference
transformers (for Qwen3.5, as transformers 5.5.4 writes it: the layout of checkpoints fine-tuned on
that stack), with the family's real vocabulary and the real vision settings; both read the same mp4 files.

For each family (Qwen2.5-VL, Qwen2-VL, Qwen3-VL, Qwen3.5) and clip length (10, 30, 60, 150 s), with the same
question, the tests compare: input ids (exact), the 3-D rotary positions of every prompt and completion
token (exact), the positions the text decoder receives while generating (exact), the sampled frame
indices, ``video_grid_thw`` / ``second_per_grid_ts`` (exact), pixel values (PIXEL_TOL), log-probs of a
fixed completion (LOGPROB_TOL) and 16 greedy tokens (exact).

Without the reference environment the tests skip with the reason; with TEMPSAMP_REQUIRE_PARITY=1
(what `make test-parity` sets) its absence is a failure.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch

from video_files import write_motion_video

ROOT = Path(__file__).resolve().parents[1]
REF_ENV = Path(os.environ.get("TEMPSAMP_REF_ENV", ROOT / ".venv-ref"))
REF_SCRIPT = ROOT / "scripts" / "parity_reference.py"
# The reference stack of each family: a folder of --target installs put first on PYTHONPATH
# (Makefile, test-parity): transformers 4.51.3 + qwen-vl-utils 0.0.10 for Qwen2/2.5-VL (the
# grounding models' training stack), transformers 4.57.1 + qwen-vl-utils 0.0.14 for Qwen3-VL,
# transformers 5.5.4 + qwen-vl-utils 0.0.14 for Qwen3.5 (the TempSamp-R1 verl re-implementation's pins).
STACKS = {"qwen2_5_vl": "tf4.51", "qwen2_vl": "tf4.51", "qwen3_vl": "tf4.57", "qwen3_5": "tf5.5"}
FAMILIES = tuple(STACKS)
CLIP_SECONDS = (10, 30, 60, 150)

# Tolerances (docs/evaluation.md, "Parity with the reference stack").
# Pixel values: decord and PyAV decode these files to bit-identical RGB, and the project's processor
# turns the reference's frames into pixel values within 2.4e-7 (measured), so equal frames give equal
# pixel values up to fp32 rounding of the normalisation. Any resize other than qwen-vl-utils' own
# (torchvision bicubic with antialias on uint8) moves pixels by whole 8-bit levels, i.e. >= 0.015.
PIXEL_TOL = 1e-5
# Log-probs of a fixed completion, fp32 eager attention on both sides: given the reference's own
# inputs and positions, transformers 5.23 reproduces them within 1e-6 (measured); 1e-4 leaves room
# for the order of floating-point operations, while a wrong frame, pixel or position moves them by
# 3e-3 or more on this model.
LOGPROB_TOL = 1e-4
TEXT_LOGIT_TOL = 1e-4  # the same checkpoint on a text-only input in both stacks (measured: ~1e-6)

# The message every case sends (the video first, then the question, the default system prompt:
# tempsamp's own order today) and the qwen-vl-utils video keys. The budget binds at 150 s (300
# frames share 1200 tokens' worth of pixels by 2-frame slices), so the budget rule is exercised.
QUESTION = ("Find the start and end time of the moment: the white square reaches the top of the frame. "
            "Answer as <answer>start to end</answer> in seconds.")
COMPLETION = "<think>The square rises near the start.</think> <answer>2.50 to 7.00</answer>"
VIDEO_OPTIONS = {"fps": 2.0, "min_pixels": 4 * 28 * 28, "max_pixels": 12 * 28 * 28, "total_pixels": 1200 * 28 * 28,
                 "max_frames": 768}
GREEDY_TOKENS = 16


def ref_stack(family: str) -> Path:
    return REF_ENV / STACKS[family]


def _require_reference() -> None:
    missing = [str(ref_stack(f)) for f in FAMILIES if not (ref_stack(f) / "transformers").is_dir()]
    if missing:
        reason = f"reference environment absent ({', '.join(sorted(set(missing)))}); build it with `make test-parity`"
        if os.environ.get("TEMPSAMP_REQUIRE_PARITY") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


def run_reference(family: str, *args: str) -> None:
    """scripts/parity_reference.py with the family's reference stack in front of the project's torch."""
    env = {**os.environ, "PYTHONPATH": str(ref_stack(family)), "FORCE_QWENVL_VIDEO_READER": "decord",
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(REF_SCRIPT), *args], env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"reference {args[0]} failed:\n{done.stderr[-4000:]}"


# ----------------------------------------------------------------------------------------------
# Fixtures: checkpoints, videos, the two sides' results
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def parity_dir(tmp_path_factory):
    _require_reference()
    return tmp_path_factory.mktemp("parity")


@pytest.fixture(scope="session")
def videos(parity_dir):
    paths = {}
    for seconds in CLIP_SECONDS:
        paths[seconds] = parity_dir / f"clip{seconds}s.mp4"
        write_motion_video(paths[seconds], seconds)  # 320x240 at 10 FPS
    return paths


# Qwen3's tokenizer adds these (non-special) tokens after the Qwen2.5 ones (Qwen3-VL tokenizer_config.json).
QWEN3_EXTRA_TOKENS = ((151665, "<tool_response>"), (151666, "</tool_response>"), (151667, "<think>"),
                      (151668, "</think>"))


def _tokenizer_dir(parity_dir: Path, family: str) -> Path:
    """The real Qwen2.5 vocabulary (tempsamp.models.tiny), plus Qwen3's added tokens for Qwen3-VL;
    Qwen3.5's own vocabulary for Qwen3.5."""
    from tokenizers import AddedToken

    from tempsamp.models.tiny import CHAT_TEMPLATE, build_qwen35_tokenizer, build_tokenizer

    out = parity_dir / f"tokenizer-{family}"
    tokenizer = build_qwen35_tokenizer() if family == "qwen3_5" else build_tokenizer("real")
    if family == "qwen3_vl":
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for _, t in QWEN3_EXTRA_TOKENS])
        assert [tokenizer.convert_tokens_to_ids(t) for _, t in QWEN3_EXTRA_TOKENS] == [i for i, _ in QWEN3_EXTRA_TOKENS]
    tokenizer.save_pretrained(out)
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    return out


def cases(videos) -> list[dict]:
    return [{"name": f"clip{s}s", "video": str(path), "video_options": VIDEO_OPTIONS, "system_prompt": None,
             "text_first": False, "question": QUESTION, "completion": COMPLETION, "max_new_tokens": GREEDY_TOKENS}
            for s, path in videos.items()]


@pytest.fixture(scope="session")
def reference(parity_dir, videos):
    """family -> (checkpoint folder, {clip seconds: reference arrays}), built and run once per session."""
    results = {}

    def get(family):
        if family not in results:
            model_dir = parity_dir / f"model-{family}"
            run_reference(family, "build", family, str(model_dir), str(_tokenizer_dir(parity_dir, family)))
            spec = parity_dir / f"cases-{family}.json"
            spec.write_text(json.dumps(cases(videos)))
            out = parity_dir / f"reference-{family}"
            run_reference(family, "run", str(model_dir), str(spec), str(out))
            arrays = {s: dict(np.load(out / f"clip{s}s.npz")) for s in CLIP_SECONDS}
            meta = {s: json.loads((out / f"clip{s}s.json").read_text()) for s in CLIP_SECONDS}
            results[family] = (model_dir, arrays, meta, dict(np.load(out / "text_only.npz")))
        return results[family]

    return get


@lru_cache(maxsize=None)
def _load(model_dir: str):
    from tempsamp.models import qwen_vl

    return qwen_vl.load_policy(model_dir, dtype=torch.float32, attn_implementation="eager")


def _decoder_positions_recorder():
    spec = importlib.util.spec_from_file_location("parity_reference", REF_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.DecoderPositions


def tempsamp_side(model_dir, video, spec) -> dict:
    """What tempsamp feeds the checkpoint for this case, through its public path.

    The one place that says how tempsamp is configured to match the reference: qwen-vl-utils' frame
    choice, budget and resize filter (frame_sampling="qwen", resize="bicubic": what the peer presets
    fix, tempsamp/presets.py), the chat layout of the case (build_prompt), the model's positions as
    rope_position_ids reports them, completion_logprobs and greedy generate.
    """
    from tempsamp.evaluation.inference import VideoSettings
    from tempsamp.models import qwen_vl

    model, processor = _load(str(model_dir))
    options = spec["video_options"]
    video = VideoSettings(**options, frame_sampling="qwen", resize="bicubic").load(
        video, factor=qwen_vl.frame_factor(processor))
    prompt = qwen_vl.build_prompt(processor, spec["question"], video.frames, video.fps,
                                  system_prompt=spec.get("system_prompt"), video_first=not spec.get("text_first"),
                                  source_frames=video.source_frames())
    completion = qwen_vl.completion_ids(processor, spec["completion"])
    batch = qwen_vl.group_batch(prompt, [completion], qwen_vl.pad_token_id(processor))
    with torch.no_grad():
        positions = qwen_vl.rope_position_ids(model, batch)
        logprobs = qwen_vl.completion_logprobs(model, batch)
    recorder = _decoder_positions_recorder()(model)
    try:
        greedy = qwen_vl.generate(model, processor, prompt, num_samples=1, max_new_tokens=spec["max_new_tokens"],
                                  do_sample=False)
    finally:
        recorder.handle.remove()
    result = {
        "input_ids": batch["input_ids"][0].numpy(),
        "prompt_length": prompt["input_ids"].shape[1],
        "positions": positions[-3:, 0].numpy(),
        "video_grid_thw": prompt["video_grid_thw"].numpy(),
        "pixel_values_videos": prompt["pixel_values_videos"].float().numpy(),
        "frame_times": np.asarray(video.timestamps),  # presentation times of the frames taken (s)
        "num_frames": len(video.frames),
        "logprobs": logprobs[0].numpy(),
        "greedy_ids": np.asarray(greedy.ids[0]),
        "generation_positions": recorder.positions(),
    }
    if "second_per_grid_ts" in prompt:
        result["second_per_grid_ts"] = prompt["second_per_grid_ts"].reshape(-1).float().numpy()
    return result


@pytest.fixture(scope="session")
def both(reference, videos):
    """(family, seconds) -> (reference arrays, tempsamp arrays, reference metadata).

    With TEMPSAMP_PARITY_SUMMARY=path, the measured differences of every case compared (parity_summary)
    are written there as JSON at the end of the session: the figures docs/evaluation.md quotes.
    """
    cache, summary = {}, {}

    def get(family, seconds):
        if (family, seconds) not in cache:
            model_dir, arrays, meta, _ = reference(family)
            spec = cases({seconds: videos[seconds]})[0]
            cache[family, seconds] = (arrays[seconds], tempsamp_side(model_dir, videos[seconds], spec), meta[seconds])
            summary[f"{family}-{seconds}s"] = parity_summary(*cache[family, seconds][:2])
        return cache[family, seconds]

    yield get
    if target := os.environ.get("TEMPSAMP_PARITY_SUMMARY"):
        Path(target).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")


CASES = [pytest.param(f, s, id=f"{f}-{s}s") for f in FAMILIES for s in CLIP_SECONDS]


# ----------------------------------------------------------------------------------------------
# The checkpoint loads identically in both stacks
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_gives_the_same_logits_in_both_stacks(reference, family):
    model_dir, _, _, text_only = reference(family)
    model, _ = _load(str(model_dir))
    ids = torch.as_tensor(text_only["input_ids"])[None]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].float().numpy()
    assert logits.shape == text_only["logits"].shape
    assert np.abs(logits - text_only["logits"]).max() <= TEXT_LOGIT_TOL


def test_qwen3_5_checkpoint_as_its_stack_writes_it(reference):
    """transformers 5.5.4 writes Qwen3.5's vision tower as model.language_model.visual.* (what checkpoints
    fine-tuned on that stack hold); tempsamp reads it into the tower, weight for weight."""
    from safetensors import safe_open

    model_dir = reference("qwen3_5")[0]
    with safe_open(Path(model_dir) / "model.safetensors", "pt") as f:
        saved = {k: f.get_tensor(k) for k in f.keys() if ".visual." in k}
    assert saved and all(k.startswith("model.language_model.visual.") for k in saved)
    tower = _load(str(model_dir))[0].model.visual.state_dict()
    assert {f"model.language_model.visual.{k}" for k in tower} == set(saved)
    assert all(torch.equal(tower[k], saved[f"model.language_model.visual.{k}"]) for k in tower)


def reference_inputs(ref, family: str) -> dict:
    """The reference's model inputs (prompt + fixed completion) as transformers 5.23 takes them."""
    ids = torch.as_tensor(ref["input_ids"])[None]
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
              "mm_token_type_ids": (ids == VIDEO_TOKEN_IDS[family]).long() * 2,  # 5.23: image 1, video 2
              "pixel_values_videos": torch.as_tensor(ref["pixel_values_videos"]),
              "video_grid_thw": torch.as_tensor(ref["video_grid_thw"])}
    if "second_per_grid_ts" in ref:
        inputs["second_per_grid_ts"] = torch.as_tensor(ref["second_per_grid_ts"])
    return inputs


# <|video_pad|>: Qwen2.5's vocabulary (Qwen2/2.5/3-VL), Qwen3.5's own.
VIDEO_TOKEN_IDS = {"qwen2_5_vl": 151656, "qwen2_vl": 151656, "qwen3_vl": 151656, "qwen3_5": 248057}


@pytest.mark.parametrize("family, seconds", CASES)
def test_model_agrees_given_the_reference_inputs(reference, family, seconds):
    """The model alone: the reference's inputs AND positions in, the same log-probs out (no input path involved)."""
    model_dir, arrays, _, _ = reference(family)
    ref = arrays[seconds]
    model, _ = _load(str(model_dir))
    prompt_length = int(ref["prompt_length"])
    with torch.no_grad():
        logits = model(**reference_inputs(ref, family), position_ids=torch.as_tensor(ref["positions"])[:, None, :],
                       use_cache=False).logits[0, prompt_length - 1:-1].float()
    targets = torch.as_tensor(ref["completion_ids"])
    logprobs = (logits.gather(-1, targets[:, None])[:, 0] - torch.logsumexp(logits, -1)).numpy()
    assert np.abs(logprobs - ref["logprobs"]).max() <= LOGPROB_TOL


@pytest.mark.parametrize("family, seconds", CASES)
def test_positions_rule_on_the_reference_inputs(reference, family, seconds):
    """The positions rule alone: tempsamp's rope_position_ids on the reference's own tokens and grid."""
    model_dir, arrays, _, _ = reference(family)
    ref = arrays[seconds]
    model, _ = _load(str(model_dir))
    with torch.no_grad():
        positions = qwen_vl_module().rope_position_ids(model, reference_inputs(ref, family))[-3:, 0].numpy()
    assert np.array_equal(positions, ref["positions"]), describe_positions(ref, {"positions": positions})


def qwen_vl_module():
    from tempsamp.models import qwen_vl

    return qwen_vl


# ----------------------------------------------------------------------------------------------
# Model inputs and outputs, tempsamp against the reference
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family, seconds", CASES)
def test_same_frames(both, family, seconds):
    ref, ours, meta = both(family, seconds)
    assert meta["video_reader"] == "decord"
    assert ours["num_frames"] == len(ref["frame_indices"])
    # tempsamp reports the frames' presentation times; the clips are 10 FPS from t = 0, so frame i is at i / 10 s.
    assert np.array_equal(np.round(ours["frame_times"] * 10).astype(int), ref["frame_indices"])


@pytest.mark.parametrize("family, seconds", CASES)
def test_same_grid(both, family, seconds):
    ref, ours, _ = both(family, seconds)
    assert np.array_equal(ours["video_grid_thw"], ref["video_grid_thw"])
    if "second_per_grid_ts" in ref:
        assert np.array_equal(ours["second_per_grid_ts"], ref["second_per_grid_ts"])


@pytest.mark.parametrize("family, seconds", CASES)
def test_same_input_ids(both, family, seconds):
    ref, ours, _ = both(family, seconds)
    assert ours["prompt_length"] == int(ref["prompt_length"])
    assert np.array_equal(ours["input_ids"], ref["input_ids"])


@pytest.mark.parametrize("family, seconds", CASES)
def test_same_positions(both, family, seconds):
    ref, ours, _ = both(family, seconds)
    assert ours["positions"].shape == ref["positions"].shape
    assert np.array_equal(ours["positions"], ref["positions"]), describe_positions(ref, ours)


@pytest.mark.parametrize("family, seconds", CASES)
def test_same_generation_positions(both, family, seconds):
    ref, ours, _ = both(family, seconds)
    # Text tokens step the positions by one whatever their value (placeholder tokens are suppressed on
    # both sides), so the positions compare even where the greedy tokens differ.
    assert ours["generation_positions"].shape == ref["generation_positions"].shape
    assert np.array_equal(ours["generation_positions"], ref["generation_positions"]), \
        f"tempsamp - reference on the generated tokens: {_generation_gap(ref, ours)}"


@pytest.mark.parametrize("family, seconds", CASES)
def test_same_pixels(both, family, seconds):
    ref, ours, _ = both(family, seconds)
    assert ours["pixel_values_videos"].shape == ref["pixel_values_videos"].shape
    assert np.abs(ours["pixel_values_videos"] - ref["pixel_values_videos"]).max() <= PIXEL_TOL


@pytest.mark.parametrize("family, seconds", CASES)
def test_same_completion_logprobs(both, family, seconds):
    ref, ours, _ = both(family, seconds)
    assert ours["logprobs"].shape == ref["logprobs"].shape
    assert np.abs(ours["logprobs"] - ref["logprobs"]).max() <= LOGPROB_TOL


@pytest.mark.parametrize("family, seconds", CASES)
def test_same_greedy_tokens(both, family, seconds):
    ref, ours, _ = both(family, seconds)
    assert len(ref["greedy_ids"]) == GREEDY_TOKENS  # the random model does not stop early: 16 are compared
    assert np.array_equal(ours["greedy_ids"], ref["greedy_ids"])


def describe_positions(ref, ours) -> str:
    """Which tokens' positions differ and by how much (the failure message)."""
    if ours["positions"].shape != ref["positions"].shape:
        return f"shapes differ: {ours['positions'].shape} vs {ref['positions'].shape}"
    diff = ours["positions"].astype(int) - ref["positions"].astype(int)
    tokens = np.nonzero(diff.any(axis=0))[0]
    return (f"{len(tokens)} of {diff.shape[1]} tokens differ (first at {tokens[0] if len(tokens) else None}); "
            f"tempsamp - reference ranges from {diff.min()} to {diff.max()}")


def parity_summary(ref, ours) -> dict:
    """The differences, measured (scripts and docs quote these); not an assertion."""
    same_shape = ours["positions"].shape == ref["positions"].shape
    diff = ours["positions"].astype(int) - ref["positions"].astype(int) if same_shape else None
    pixels_same = ours["pixel_values_videos"].shape == ref["pixel_values_videos"].shape
    pix = np.abs(ours["pixel_values_videos"] - ref["pixel_values_videos"]) if pixels_same else None
    lp_same = ours["logprobs"].shape == ref["logprobs"].shape
    n = min(len(ours["greedy_ids"]), len(ref["greedy_ids"]))
    agree = int(np.argmax(ours["greedy_ids"][:n] != ref["greedy_ids"][:n])) if (ours["greedy_ids"][:n] != ref["greedy_ids"][:n]).any() else n
    return {
        "frames": [int(ours["num_frames"]), int(len(ref["frame_indices"]))],
        "video_tokens": [int(np.prod(ours["video_grid_thw"], axis=1).sum() // 4),
                         int(np.prod(ref["video_grid_thw"], axis=1).sum() // 4)],
        "grid": [ours["video_grid_thw"].tolist(), ref["video_grid_thw"].tolist()],
        "input_ids_equal": bool(np.array_equal(ours["input_ids"], ref["input_ids"])),
        "tokens": [int(len(ours["input_ids"])), int(len(ref["input_ids"]))],
        "positions_differ": (int(diff.any(axis=0).sum()) if same_shape else None),
        "position_diff_range": ([int(diff.min()), int(diff.max())] if same_shape else None),
        "pixel_max_abs": (float(pix.max()) if pixels_same else None),
        "pixel_mean_abs": (float(pix.mean()) if pixels_same else None),
        "logprob_max_abs": (float(np.abs(ours["logprobs"] - ref["logprobs"]).max()) if lp_same else None),
        "greedy_agree_prefix": agree,
        # Positions fed to the decoder for the generated tokens (after the prompt).
        "generation_position_diff_range": _generation_gap(ref, ours),
    }


def _generation_gap(ref, ours):
    prompt = int(ref["prompt_length"])
    a, b = ours["generation_positions"][:, prompt:], ref["generation_positions"][:, prompt:]
    if a.shape != b.shape or a.size == 0:
        return None
    diff = a.astype(int) - b.astype(int)
    return [int(diff.min()), int(diff.max())]


# ----------------------------------------------------------------------------------------------
# An input preset end to end: TimeZero's evaluation inputs (tempsamp/presets.py)
# ----------------------------------------------------------------------------------------------


def test_timezero_preset_reproduces_its_stack(reference, videos, parity_dir):
    """``input_preset=timezero`` against TimeZero's own message (its template with the sentence, the
    text before the video, no system message, total_pixels 3584 x 28 x 28, min_pixels 16 x 28 x 28) run
    through qwen-vl-utils 0.0.10 and transformers 4.51: the same tokens, positions, pixels, log-probs."""
    from tempsamp.presets import get_preset
    from tempsamp.prompts import COT

    preset = get_preset("timezero")
    model_dir, _, _, _ = reference("qwen2_5_vl")
    options = {k: preset.video[k] for k in ("fps", "min_pixels", "max_pixels", "total_pixels", "max_frames")}
    spec = {"name": "timezero", "video": str(videos[30]), "video_options": options, "system_prompt": None,
            "text_first": not preset.video_first, "question": preset.prompt("person turn a light on.", COT, duration=30.0),
            "completion": COMPLETION, "max_new_tokens": GREEDY_TOKENS}
    cases_file = parity_dir / "cases-timezero.json"
    cases_file.write_text(json.dumps([spec]))
    out = parity_dir / "reference-timezero"
    run_reference("qwen2_5_vl", "run", str(model_dir), str(cases_file), str(out))
    ref = dict(np.load(out / "timezero.npz"))
    ours = tempsamp_side(model_dir, videos[30], spec)
    assert preset.video["frame_sampling"] == "qwen" and preset.video["resize"] == "bicubic"  # what tempsamp_side uses
    assert np.array_equal(ours["input_ids"], ref["input_ids"])
    assert np.array_equal(ours["positions"], ref["positions"]), describe_positions(ref, ours)
    assert np.array_equal(ours["video_grid_thw"], ref["video_grid_thw"])
    assert np.abs(ours["pixel_values_videos"] - ref["pixel_values_videos"]).max() <= PIXEL_TOL
    assert np.abs(ours["logprobs"] - ref["logprobs"]).max() <= LOGPROB_TOL
    assert np.array_equal(ours["greedy_ids"], ref["greedy_ids"])
