"""A whole RL step with its rollouts batched into one call, against the per-query loop.

    python benchmarks/bench_batched_step.py [--queries 4] [--group 8] [--new-tokens 32] [--steps 2]
                                            [--vocab real|small]

On the tiny Qwen2.5-VL (real vocabulary by default), ``--queries`` queries per step, each with its own
8-s video at 2 FPS (56x56 frames), G = ``--group``. Four variants, interleaved step by step in one
process (so a change of load on a shared machine hits all alike), with the training loop's own
pieces (prepare_query, the engine, score, advantages, update with a reference pass, beta = 0.04,
one AdamW step):
- per-query: one ``engine.sample`` (one transformers ``generate``) per query, as the loop did before;
- batched: one ``engine.sample_batch`` for the whole step (one left-padded ``generate``);
each for TempSamp (G-1 sampled + the ground truth) and plain GRPO (G sampled); and
- packed (TempSamp): batched, with ``rows_per_forward`` = the whole step's rows, so the reference
  and policy log-prob passes are one forward each instead of one per group.
Printed: per variant the step and rollout time (minimum over ``--steps`` steps after one warm-up,
the least disturbed by other processes), generated tokens; the process's peak RSS; then the ratios
batched / per-query (issue target: <= 0.6) and TempSamp / GRPO step time, batched (target: within
0.05 of (G-1)/G), and packed / batched update (reference + policy + optimizer) time. A random model rarely stops early, so every sample runs to --new-tokens.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout


def run(args) -> dict:
    """Every variant's step times, the variants interleaved step by step in this one process."""
    import numpy as np
    import torch

    from tempsamp.data.example import Example
    from tempsamp.models import qwen_vl
    from tempsamp.models.tiny import TinySpec, ensure_tiny_model
    from tempsamp.train import loop
    from tempsamp.train.config import load_config
    from tempsamp.train.parallel import Parallel
    from tempsamp.train.rollout_engine import TransformersEngine

    torch.set_num_threads(1)
    model, processor = qwen_vl.load_policy(str(ensure_tiny_model(spec=TinySpec(vocab=args.vocab))))
    qwen_vl.freeze_vision_tower(model)
    ref_model = __import__("copy").deepcopy(model).eval().requires_grad_(False)
    parallel = Parallel("ddp")  # one process: the plain model
    parallel.prepare(model, lambda params: torch.optim.AdamW(params, lr=1e-6), max_grad_norm=1.0)
    pad_id = qwen_vl.pad_token_id(processor)
    rng = np.random.default_rng(0)
    spans = [(2.0, 5.0), (1.0, 3.5), (4.0, 7.0), (0.5, 2.0), (3.0, 6.0), (5.0, 7.5)]
    examples = [Example(qid=f"q{i}", video_id=f"v{i}", video_path=None, duration=8.0, query=f"when is object {i} visible?",
                        spans=(spans[i % len(spans)],)) for i in range(args.queries)]
    videos = {ex.qid: rng.integers(0, 256, (16, 56, 56, 3), dtype=np.uint8) for ex in examples}

    class Frames:  # what tempsamp.video.cache.sample_frames returns, already in memory
        def __init__(self, example):
            self.frames, self.fps = videos[example.qid], 2.0

    def step(strategy: str, batched: bool, seed: int, rows_per_forward: int = 0) -> dict:
        cfg = load_config("tiny_cpu", [f"strategy={strategy}", f"num_generations={args.group}", f"rows_per_forward={rows_per_forward}",
                                       f"max_new_tokens={args.new_tokens}", "beta=0.04", "learning_rate=1e-6", "temperature=1.0"])
        engine = TransformersEngine(model, processor, max_new_tokens=cfg.max_new_tokens, temperature=1.0, top_p=1.0)
        t0 = time.perf_counter()
        model.eval()
        with torch.no_grad():
            requests = [loop.prepare_query(cfg, processor, "cpu", ex, "answer", seed + slot, Frames)
                        for slot, ex in enumerate(examples)]
            if batched:
                groups = loop.rollout_step(cfg, engine, processor, examples, requests, "answer")
            else:
                groups = [loop.rollout_step(cfg, engine, processor, [ex], [req], "answer")[0] for ex, req in zip(examples, requests)]
        t_rollout = time.perf_counter() - t0
        task, fmt, off, _ = loop.score(cfg, groups, False, loop.Counters())
        adv = loop.advantages(cfg, task, fmt, off)
        model.train()
        t_update = time.perf_counter()
        loop.update(cfg, model, ref_model, groups, adv, parallel, pad_id)
        return {"step_s": time.perf_counter() - t0, "rollout_s": t_rollout, "tokens": sum(g.generated_tokens for g in groups),
                "update_s": time.perf_counter() - t_update}

    # (label, mode): mode 0 per-query, 1 batched, 2 batched and packed (rows_per_forward = the step's rows)
    variants = [(label, strategy, mode) for label, strategy in (("TempSamp", "shaping"), ("GRPO", "grpo"))
                for mode in (0, 1)] + [("TempSamp", "shaping", 2)]
    times = {(label, mode): [] for label, _, mode in variants}
    for i in range(args.steps + 1):  # the first round warms up
        for label, strategy, mode in variants:  # interleaved: a load change hits every variant alike
            result = step(strategy, mode > 0, seed=1000 * i, rows_per_forward=args.queries * args.group if mode == 2 else 0)
            if i:
                times[(label, mode)].append(result)
    return {key: {"step_s": min(r["step_s"] for r in rows), "rollout_s": min(r["rollout_s"] for r in rows),
                  "update_s": min(r["update_s"] for r in rows), "tokens": max(r["tokens"] for r in rows)}
            for key, rows in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=4)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--vocab", choices=("real", "small"), default="real")
    args = parser.parse_args()
    results = run(args)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"tiny Qwen2.5-VL ({args.vocab} vocabulary), {args.queries} queries/step, G={args.group}, "
          f"<= {args.new_tokens} new tokens, 8-s videos at 2 FPS; min over {args.steps} steps after a warm-up, 1 thread")
    for (label, mode), r in results.items():
        print(f"{label:8s} {('per-query', 'batched', 'packed')[mode]:9s}  step {r['step_s']:6.2f} s  rollout {r['rollout_s']:6.2f} s  "
              f"update {r['update_s']:6.2f} s  {r['tokens']:5d} tokens")
    print(f"peak RSS of the process (all variants share the model; the largest is the batched GRPO rollout): {peak:.2f} GB")
    for label in ("TempSamp", "GRPO"):
        print(f"{label}: batched / per-query step time = {results[(label, 1)]['step_s'] / results[(label, 0)]['step_s']:.2f} "
              f"(rollout {results[(label, 1)]['rollout_s'] / results[(label, 0)]['rollout_s']:.2f}; target <= 0.6)")
    target = (args.group - 1) / args.group
    for batched in (0, 1):
        ratio = results[("TempSamp", batched)]["step_s"] / results[("GRPO", batched)]["step_s"]
        print(f"TempSamp / GRPO step time, {'batched' if batched else 'per-query'}: {ratio:.2f} "
              f"(rollout {results[('TempSamp', batched)]['rollout_s'] / results[('GRPO', batched)]['rollout_s']:.2f}; "
              f"(G-1)/G = {target:.3f})")
    packed, batched = results[("TempSamp", 2)], results[("TempSamp", 1)]
    print(f"TempSamp packed (rows_per_forward={args.queries * args.group}) / one group per forward: update time "
          f"{packed['update_s'] / batched['update_s']:.2f}, step time {packed['step_s'] / batched['step_s']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
