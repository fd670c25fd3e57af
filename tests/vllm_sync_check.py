"""Run by tests/test_vllm.py under torchrun (2 gloo processes): each process's own vLLM engine
receives the sharded policy's weights (FSDP2 and ZeRO-3; full fine-tuning and LoRA), then scores a
fixed completion; the policy (its sharded forward) scores the same. Writes one JSON line per
(mode, lora, rank) to OUT: the largest per-token difference, before and after the push.

    torchrun --nproc-per-node 2 tests/vllm_sync_check.py MODEL_DIR OUT
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

from tempsamp.models import qwen_vl
from tempsamp.train.parallel import Parallel
from tempsamp.train.rollout_engine import VLLMEngine

TEXT = "When does the person open the door?"


def perturb(model, seed: int, vision: bool, scale: float = 0.5) -> None:
    """Noise on every matrix (the vision tower's too when ``vision``), as a full fine-tuning update would add."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() >= 2 and (vision or "visual" not in name):
                parameter.add_(torch.randn(parameter.shape, generator=generator) * scale / parameter.shape[-1] ** 0.5)


def engine_logprobs(engine, frames, completion) -> torch.Tensor:
    import vllm

    suffix = engine.processor.tokenizer.decode(completion, skip_special_tokens=False)
    params = vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
    (output,) = engine.llm.generate([engine.request(TEXT, frames, 2.0, completion=suffix)], sampling_params=params,
                                    use_tqdm=False)
    return torch.tensor([d[t].logprob for d, t in zip(output.prompt_logprobs[-len(completion):], completion)])


def main(model_dir: str, out: str) -> None:
    torch.set_num_threads(1)
    first = Parallel("fsdp")  # the process group; each case wraps its own model
    _, processor = qwen_vl.load_policy(model_dir, dtype=torch.float32, device="cpu")
    engine = VLLMEngine(model_dir, processor, model_type="qwen2_5_vl", max_new_tokens=8, temperature=1.0, top_p=1.0,
                        dtype="float32", max_model_len=2048)
    frames = np.random.default_rng(0).integers(0, 256, (4, 112, 112, 3), dtype=np.uint8)
    completion = qwen_vl.completion_ids(processor, "The event happens from 3.0 to 7.5 seconds.")
    prompt = qwen_vl.build_prompt(processor, TEXT, frames, 2.0)
    batch = qwen_vl.group_batch(prompt, [completion], qwen_vl.pad_token_id(processor))
    rows = []
    # LoRA first: a frozen vision tower is never pushed (it is the checkpoint's), so it must still be
    # the checkpoint's in the engine; the full fine-tuning cases then push a changed one.
    for k, (mode, lora) in enumerate([("fsdp", True), ("zero3", True), ("fsdp", False), ("zero3", False)]):
        parallel = Parallel(mode)
        model, _ = qwen_vl.load_policy(model_dir, dtype=torch.float32, device="cpu")
        # the same on every process: a trained policy, not the checkpoint on disk. Under LoRA the
        # vision tower is frozen (never pushed: it is the checkpoint's), the base takes the noise.
        perturb(model, seed=10 + k, vision=not lora)
        if lora:
            model = qwen_vl.apply_lora(model, r=4, alpha=8, dropout=0.0, freeze_vision=True)
            generator = torch.Generator().manual_seed(20 + k)
            with torch.no_grad():
                for name, parameter in model.named_parameters():
                    if "lora_B" in name:
                        parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
        wrapped = parallel.prepare(model, lambda ps: torch.optim.AdamW(ps, lr=0.0), max_grad_norm=1.0)
        wrapped.eval()
        with torch.no_grad():
            want = qwen_vl.completion_logprobs(wrapped, batch)[0]
        stale = engine_logprobs(engine, frames, completion)
        start = time.perf_counter()
        # the frozen vision tower left out under LoRA: vLLM keeps its own (the checkpoint's)
        engine.push_weights(parallel.policy, weights=parallel.full_weights(skip_frozen_vision=lora))
        seconds = time.perf_counter() - start
        got = engine_logprobs(engine, frames, completion)
        rows.append({"mode": mode, "lora": lora, "rank": parallel.rank, "world": parallel.world,
                     "engine": engine.description, "push_seconds": seconds,
                     "max_diff_before": float((stale - want).abs().max()), "max_diff_after": float((got - want).abs().max())})
        del wrapped, model
        parallel.model = parallel.policy = parallel.engine = parallel.optimizer = None
    everyone = first.gather_object(rows)
    if first.is_main:
        with open(out, "w") as f:
            for part in everyone:
                for row in part:
                    f.write(json.dumps(row) + "\n")
    first.barrier()
    engine.close()  # destroys every process group, the trainer's too
    first.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
