"""Where the rollout's completions come from: one small interface, two engines.

    engine = make_engine(cfg, policy, processor, model_path)
    ids, texts = engine.sample(prompt_inputs, frames, fps, text, num_samples=G - 1, seed=s)
    ...  # the optimizer step
    engine.push_weights(policy)            # vLLM: copy the updated weights in; transformers: no-op

- ``TransformersEngine`` (default, tested): ``model.generate`` on the policy itself, through the
  model adapter (tempsamp.models.qwen_vl.generate). Nothing to push: it *is* the policy.
- ``VLLMEngine`` (optional extra ``pip install 'tempsamp[vllm]'``, GPU only): a colocated
  ``vllm.LLM`` in the same process as the trainer. Video goes in as the already-sampled frames with
  their sampling metadata (the frame rate, and for Qwen3-VL the frame times), so vLLM's processor
  sees exactly what the trainer's processor sees; the trainer's weights are pushed into vLLM after
  every optimizer step (LoRA: merged into the base first).
  NOT RUN on the machines this was written on (no GPU, no vllm): it is written from vLLM's
  documented API (``LLM``, ``SamplingParams``, ``multi_modal_data={"video": ...}``,
  ``model.load_weights``) and must be checked on a GPU (tests/test_distributed.py has the greedy
  agreement test, skipped without CUDA and vllm).

Whichever engine samples, the log-probs the loss uses are always recomputed by the policy's own
forward pass with the video (tempsamp.train.loop.update), never taken from the sampler.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from tempsamp.models import qwen_vl

ENGINES = ("transformers", "vllm")


class RolloutEngine(Protocol):
    def sample(self, prompt_inputs: dict, frames: np.ndarray, fps: float, text: str, *, num_samples: int,
               seed: int) -> tuple[list[list[int]], list[str]]:
        """``num_samples`` completions (token ids ending with the stop token unless cut, and texts)."""

    def push_weights(self, model) -> None:
        """Make the engine sample from ``model``'s current weights."""


class TransformersEngine:
    """Sampling with transformers ``generate`` on the policy itself (the default)."""

    def __init__(self, model, processor, *, max_new_tokens: int, temperature: float, top_p: float):
        self.model, self.processor = model, processor
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p

    def sample(self, prompt_inputs, frames, fps, text, *, num_samples, seed):
        torch.manual_seed(seed)  # each query's samples are a function of (seed, step, slot)
        ids, texts = qwen_vl.generate(
            self.model, self.processor, prompt_inputs, num_samples=num_samples, max_new_tokens=self.max_new_tokens,
            temperature=self.temperature, top_p=self.top_p, do_sample=True,
        )
        return list(ids), list(texts)

    def push_weights(self, model) -> None:
        pass  # generation runs on the policy's own parameters


# ---------------------------------------------------------------------------------------------- vLLM


def video_payload(model_type: str, frames: np.ndarray, fps: float) -> tuple[object, dict]:
    """(the ``multi_modal_data["video"]`` item, ``mm_processor_kwargs``) for vLLM, per family.

    The frames were sampled by the trainer at ``fps`` from t = 0 and are described as the whole
    video (frames_indices 0..T-1), exactly as tempsamp.models.qwen_vl.video_metadata tells the
    transformers processor, and vLLM must not resample them (do_sample_frames False).
    Qwen2-VL / Qwen2.5-VL: the frame array, with ``fps`` as a processor kwarg (Qwen2.5-VL derives
    second_per_grid_ts = temporal_patch_size / fps from it). Qwen3-VL: vLLM's parser wants a
    ``(frames, metadata)`` tuple, because the processor writes each slice's time into the prompt.
    """
    frames = np.asarray(frames)
    if model_type == "qwen3_vl":
        metadata = {
            "fps": float(fps), "duration": len(frames) / float(fps), "total_num_frames": len(frames),
            "frames_indices": list(range(len(frames))), "video_backend": "pyav", "do_sample_frames": False,
        }
        return (frames, metadata), {"do_sample_frames": False}
    if model_type in ("qwen2_vl", "qwen2_5_vl"):
        return frames, {"fps": float(fps)}
    raise ValueError(f"video_payload: model_type {model_type!r} is not supported")


def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """The weights to push into the sampler, under the base model's parameter names.

    Full fine-tuning: the state dict. LoRA (peft): the adapters merged into the base weights
    (``merge_adapter``), read, and unmerged again, with peft's name decorations removed; the
    adapter tensors themselves are left out.
    """
    model = getattr(model, "module", model)  # under DDP
    if not hasattr(model, "merge_adapter"):
        return {name: tensor.detach() for name, tensor in model.state_dict().items()}
    model.merge_adapter()
    try:
        prefix = "base_model.model."
        state = {}
        for name, tensor in model.state_dict().items():
            if "lora_" in name or "modules_to_save" in name:
                continue
            name = name[len(prefix):] if name.startswith(prefix) else name
            state[name.replace(".base_layer.", ".")] = tensor.detach().clone()
        return state
    finally:
        model.unmerge_adapter()


class VLLMEngine:
    """Sampling with a colocated vLLM engine (GPU). See the module docstring: not run here."""

    def __init__(self, model_path: str, processor, *, model_type: str, max_new_tokens: int, temperature: float,
                 top_p: float, gpu_memory_utilization: float = 0.3, max_model_len: int = 8192, dtype: str = "bfloat16"):
        import os

        try:
            import vllm
        except ImportError as err:
            raise ImportError(
                "rollout_engine=vllm needs vLLM (a GPU and `pip install 'tempsamp[vllm]'`); "
                "the default rollout_engine=transformers needs nothing extra"
            ) from err
        # In-process engine core, so the worker's model is reachable to push weights into.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self.vllm, self.processor, self.model_type = vllm, processor, model_type
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        extra = {}
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # One engine per training process on its own GPU, inside the launcher's process group
            # (as TRL's colocate mode does); without this vLLM would start its own workers.
            extra["distributed_executor_backend"] = "external_launcher"
        self.llm = vllm.LLM(
            model=model_path, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
            limit_mm_per_prompt={"video": 1, "image": 0}, enable_prefix_caching=True, seed=0, **extra,
        )

    def sample(self, prompt_inputs, frames, fps, text, *, num_samples, seed):
        stops = qwen_vl.stop_token_ids(self.processor)
        prompt = self.processor.apply_chat_template(qwen_vl.chat_messages(text), tokenize=False, add_generation_prompt=True)
        video, mm_kwargs = video_payload(self.model_type, frames, fps)
        params = self.vllm.SamplingParams(
            n=num_samples, temperature=self.temperature, top_p=self.top_p, top_k=-1, repetition_penalty=1.0,
            max_tokens=self.max_new_tokens, seed=seed, stop_token_ids=stops, skip_special_tokens=True,
        )
        request = {"prompt": prompt, "multi_modal_data": {"video": video}, "mm_processor_kwargs": mm_kwargs}
        (output,) = self.llm.generate([request], sampling_params=params, use_tqdm=False)
        ids, texts = [], []
        for completion in output.outputs:
            row = qwen_vl.trim_at_stop(list(completion.token_ids), stops)
            # A stop token that ended the completion is part of it (the policy learns to stop),
            # whether or not this vLLM version lists it in token_ids.
            if completion.finish_reason == "stop" and (not row or row[-1] not in stops) and completion.stop_reason in stops:
                row.append(completion.stop_reason)
            ids.append(row)
            texts.append(completion.text)
        return ids, texts

    def push_weights(self, model) -> None:
        state = merged_state_dict(model)
        self._worker_model().load_weights(state.items())  # vLLM maps transformers' names itself
        self.llm.reset_prefix_cache()  # cached prefixes were computed by the old weights

    def _worker_model(self):
        executor = self.llm.llm_engine.model_executor
        worker = executor.driver_worker
        worker = getattr(worker, "worker", worker)  # V1 wraps the worker once more
        return worker.model_runner.model


def make_engine(cfg, model, processor, model_path: str) -> RolloutEngine:
    if cfg.rollout_engine == "transformers":
        return TransformersEngine(model, processor, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p)
    if cfg.rollout_engine == "vllm":
        if not torch.cuda.is_available():
            raise RuntimeError("rollout_engine=vllm needs a CUDA GPU; use rollout_engine=transformers on a CPU")
        engine = VLLMEngine(
            model_path, processor, model_type=qwen_vl.family_of(model).model_type, max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature, top_p=cfg.top_p, gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
            max_model_len=cfg.vllm_max_model_len,
        )
        engine.push_weights(model)  # a resumed run's weights, not the checkpoint on disk
        return engine
    raise ValueError(f"rollout_engine: {cfg.rollout_engine!r} is not one of {', '.join(ENGINES)}")
