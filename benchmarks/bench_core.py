"""Throughput of the algorithm core on 4096 groups of G = 8 (the issue's target: reward +
advantage computation well under 50 ms). Parsing is timed separately: it is per-string work.

    python benchmarks/bench_core.py
"""

import time

import numpy as np
import torch

from tempsamp import build_offpolicy_completion, group_advantages, iou_reward, parse_span, spans_to_array

GROUPS, G = 4096, 8


def best_of(fn, repeats=5):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main():
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    gt = np.sort(rng.uniform(0, 100, (GROUPS, 1, 2)), -1).repeat(G, 1)  # [groups, G, 2]
    pred = np.sort(rng.uniform(0, 100, (GROUPS, G, 2)), -1)
    pred[:, 0] = gt[:, 0]  # the off-policy row
    off = np.zeros((GROUPS, G), bool)
    off[:, 0] = True
    texts = [build_offpolicy_completion(tuple(p), "cot") for p in pred.reshape(-1, 2)]

    t_parse, parsed = best_of(lambda: spans_to_array([parse_span(t) for t in texts]), repeats=3)
    print(f"parse {len(texts)} answers:            {t_parse * 1e3:8.1f} ms  ({len(texts) / t_parse:,.0f} answers/s)")
    for strategy in ("grpo", "mixed", "reward_scaling", "anchor", "shaping", "shaping+anchor"):
        mask = np.zeros_like(off) if strategy == "grpo" else off

        def step():
            rewards = iou_reward(parsed.reshape(GROUPS, G, 2), gt)
            return group_advantages(rewards, mask, strategy)

        t, adv = best_of(step)
        assert torch.isfinite(adv).all()
        print(f"reward + advantages, {strategy:15s} {t * 1e3:8.2f} ms  ({GROUPS / t:,.0f} groups/s)")


if __name__ == "__main__":
    main()
