"""The seconds-fast toy: every advantage strategy of the algorithm core on a synthetic grounding task
without a video model (tempsamp/simulation/toy.py explains the task). Same task, initial policy, query order,
learning rate and steps for every strategy; mean ± std over seeds; held-out greedy mIoU.

    python benchmarks/bench_toy.py                      # the full version (well under a minute on 1 core)
    python benchmarks/bench_toy.py --seeds 3 --steps 100 # smaller
    python benchmarks/bench_toy.py --strategies anchor,shaping+anchor --anchor-tied literal,joint
                                                         # anchoring's tied-group rule, side by side
"""

import argparse
import os
import time
from dataclasses import replace

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from tempsamp.simulation.toy import TOY_STRATEGIES, ToyConfig, compare, curves_text, summary_table  # noqa: E402


def main(argv=None) -> int:
    defaults = ToyConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--strategies", default=",".join(TOY_STRATEGIES), help="comma-separated (default: all, sft last as a reference)"
    )
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--n-bins", type=int, default=defaults.n_bins, help="start bins = end bins (search space ~ n_bins^2 / 2)")
    parser.add_argument("--n-train", type=int, default=defaults.n_train)
    parser.add_argument("--min-len", type=float, default=defaults.min_len, help="shortest GT span, seconds")
    parser.add_argument("--max-len", type=float, default=defaults.max_len, help="longest GT span, seconds (short spans: sparse rewards)")
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--beta", type=float, default=defaults.beta, help="KL to the frozen initial policy (default 0)")
    parser.add_argument("--anchor-tied", default=defaults.anchor_tied,
                        help="anchoring's rule for tied on-policy groups: literal, joint, or both comma-separated "
                             "(anchoring strategies then run once per rule, labelled strategy/rule)")
    parser.add_argument("--eval-every", type=int, default=defaults.eval_every)
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    seeds = list(range(args.seeds))
    cfg = ToyConfig(
        steps=args.steps, n_bins=args.n_bins, min_len=args.min_len, max_len=args.max_len, n_train=args.n_train, lr=args.lr, beta=args.beta, eval_every=args.eval_every
    )
    print(f"toy: {cfg}")
    print(f"strategies {strategies}, seeds {seeds}")
    start, cpu_start = time.perf_counter(), time.process_time()

    def progress(strategy, seed, result):
        print(f"  {strategy:15s} seed {seed}: held-out mIoU {100 * result['final_miou']:5.1f}  "
              f"({time.perf_counter() - start:5.1f} s)", flush=True)

    rules = [r.strip() for r in args.anchor_tied.split(",") if r.strip()]
    results = {}
    for strategy in strategies:
        variants = rules if "anchor" in strategy else rules[:1]
        for rule in variants:
            label = f"{strategy}/{rule}" if "anchor" in strategy and len(rules) > 1 else strategy
            results[label] = compare([strategy], seeds, replace(cfg, anchor_tied=rule), progress=progress)[strategy]
            for r in results[label]:
                r["strategy"] = label
    print("\nheld-out greedy mIoU (%) per step, mean over seeds")
    print(curves_text(results, "heldout_miou"))
    print("\ntop-1 on-policy IoU (%) of the rollouts since the previous point, mean over seeds")
    print(curves_text(results, "top1_iou"))
    print("\nfraction of groups whose GT row gets advantage 0, mean over seeds")
    print(curves_text(results, "frac_gt_adv_zero"))
    print("\ntraining-pool greedy mIoU (%) per step, mean over seeds")
    print(curves_text(results, "train_miou"))
    print(f"\nfinal, mean ± std over {len(seeds)} seeds (%):")
    print(summary_table(results))
    # CPU time of this single-threaded process ~ the wall time on an idle core (the machine is shared)
    print(f"\ntotal {time.perf_counter() - start:.1f} s wall, {time.process_time() - cpu_start:.1f} s CPU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
