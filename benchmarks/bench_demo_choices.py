"""Two of the demo's defaults measured on the demo's miniature (tiny Qwen2.5-VL, synthetic videos, CPU):

A. anchoring's rule for groups whose on-policy rewards tie (``anchor_tied`` literal vs joint):
   held-out mIoU after RL, top-1 on-policy IoU, and the fraction of groups whose GT row got advantage 0.
B. the GT row's think sentence in the CoT stage's loss (``gt_think_loss`` train vs mask): CoT-mode
   held-out mIoU, the greedy answers' format rate, and the diversity of their think text (distinct
   think texts / answers, share equal to the GT's fixed sentence, distinct word bigrams / bigrams).

Same start model (the demo's), data, steps, learning rate and seeds for both settings of each pair;
printed side by side. Small: read the spread over seeds before the means.

    python benchmarks/bench_demo_choices.py                 # 2 seeds, about 15 min on a loaded 2-core machine
    python benchmarks/bench_demo_choices.py --part B --seeds 1 --cot-steps 4
"""

import argparse
import json
import os
import re
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402


def think_stats(texts: list[str]) -> dict:
    from tempsamp.prompts import GT_THINK
    from tempsamp.rewards import format_reward

    thinks = [m.group(1).strip() for t in texts if (m := re.search(r"<think>(.*?)</think>", t, re.DOTALL))]
    bigrams = [tuple(w[i:i + 2]) for t in thinks for w in [t.split()] for i in range(len(w) - 1)]
    return {
        "format_rate": float(format_reward(texts).mean()) if texts else float("nan"),
        "with_think": len(thinks) / max(len(texts), 1),
        "distinct_thinks": len(set(thinks)) / max(len(thinks), 1) if thinks else float("nan"),
        "gt_sentence_share": sum(t == GT_THINK for t in thinks) / max(len(thinks), 1) if thinks else float("nan"),
        "distinct_2": len(set(bigrams)) / max(len(bigrams), 1) if bigrams else float("nan"),
    }


def main(argv=None) -> int:
    import torch

    from tempsamp.data.readers import load_examples
    from tempsamp.data.synth import synthesize
    from tempsamp.demo import FRAME_PIXELS, PREBUILT_START_MODEL, QUICK, RL_LEARNING_RATE, SYNTH_KNOBS, metric_key, settings_digest
    from tempsamp.evaluation.inference import VideoSettings, evaluate
    from tempsamp.train.config import TrainConfig
    from tempsamp.train.logger import read_metrics
    from tempsamp.train.loop import train
    from tempsamp.train.sft import SFTConfig, ensure_start_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", default="AB", help="A, B or AB")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--rl-steps", type=int, default=10)
    parser.add_argument("--cot-steps", type=int, default=8)
    parser.add_argument("--eval", type=int, default=20, help="held-out queries")
    parser.add_argument("--work-dir", default=".cache/demo")
    parser.add_argument("--start", default="demo", choices=("demo", "no-cot"),
                        help="demo: the demo's start model (its supervised data holds the GT think sentence in 25%% of "
                             "examples, so it writes that sentence from the start); no-cot: the same supervised recipe "
                             "without CoT examples (built here, minutes), so only the RL stage can teach think text")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    size = QUICK
    work = Path(args.work_dir)
    video = VideoSettings(min_pixels=FRAME_PIXELS, max_pixels=FRAME_PIXELS, total_pixels=FRAME_PIXELS * 128,
                          frame_cache=str(work / "frames"))
    data = Path(synthesize(work / "synth", n=size.n_videos, seed=0, **SYNTH_KNOBS))
    test = load_examples(data / "test.jsonl", "jsonl")[: args.eval]
    sft = SFTConfig(steps=size.sft_steps, min_pixels=video.min_pixels, max_pixels=video.max_pixels,
                    total_pixels=video.total_pixels, frame_cache=video.frame_cache)
    if args.start == "demo":
        start = ensure_start_model(work / "start-model", data / "train.jsonl", sft, prebuilt=PREBUILT_START_MODEL)
    else:
        start = ensure_start_model(work / "start-model-no-cot", data / "train.jsonl", replace(sft, cot_fraction=0.0))
    print(f"start model: {start}", flush=True)
    base = TrainConfig(
        model=str(start), train_annotations=str(data / "train.jsonl"), dataset="jsonl",
        num_generations=size.num_generations, max_new_tokens=size.max_new_tokens, queries_per_step=size.queries_per_step,
        learning_rate=RL_LEARNING_RATE, beta=0.0, temperature=1.0, min_pixels=video.min_pixels, max_pixels=video.max_pixels,
        total_pixels=video.total_pixels, frame_cache=video.frame_cache, save_every=10**9, keep_last=1,
    )

    def run(cfg, modes, max_new_tokens):
        run_dir = work / f"runs-choices-{args.start}" / f"{cfg.strategy}-{settings_digest(cfg)}"
        cfg = replace(cfg, output_dir=str(run_dir)).validate()
        train(cfg, resume=True)
        model_dir = run_dir / f"checkpoint-{cfg.total_steps}" / "model"
        metrics = evaluate(str(model_dir), test, run_dir / "eval", modes, video=video, max_new_tokens=max_new_tokens, progress=False)
        generations = [json.loads(line) for line in (run_dir / "eval" / "generations.jsonl").read_text().splitlines()]
        return metrics, read_metrics(run_dir), generations

    def mean_std(values):
        v = np.asarray(values, dtype=float)
        return f"{np.nanmean(v):6.3f} ± {np.nanstd(v):.3f}" if len(v) > 1 else f"{v[0]:6.3f}"

    if "A" in args.part:
        rows = {}
        for rule in ("literal", "joint"):
            for seed in range(args.seeds):
                cfg = replace(base, strategy="anchor", anchor_tied=rule, seed=seed,
                              stages=[{"mode": "answer", "steps": args.rl_steps}])
                metrics, logs, _ = run(cfg, ("answer",), size.max_new_tokens)
                zero = [r["adv/frac_offpolicy_zero"] for r in logs if r.get("adv/frac_offpolicy_zero") is not None]
                top1 = [r["iou/top1_onpolicy"] for r in logs if r.get("iou/top1_onpolicy") is not None]
                rows.setdefault(rule, []).append((metric_key(metrics["answer"], "mIoU"), float(np.mean(zero)), float(np.mean(top1[-5:]))))
                print(f"  A anchor_tied={rule:8s} seed {seed}: mIoU {rows[rule][-1][0]:5.1f}  GT adv 0 in "
                      f"{100 * rows[rule][-1][1]:4.1f}% of groups  top-1 (last 5) {rows[rule][-1][2]:.3f}"
                      f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
        print(f"\nA. anchoring, {args.seeds} seed(s) x {args.rl_steps} RL steps, {len(test)} held-out queries (mean ± std over seeds)")
        print("| anchor_tied | held-out mIoU | groups with GT advantage 0 | top-1 on-policy IoU, last 5 steps |")
        print("|---|---|---|---|")
        for rule, values in rows.items():
            v = np.array(values)
            print(f"| {rule} | {mean_std(v[:, 0])} | {mean_std(v[:, 1])} | {mean_std(v[:, 2])} |")

    if "B" in args.part:
        # the think text the policy *samples* (T = 1) during the CoT stage, on-policy rows only
        from tempsamp.train import loop

        sampled, real_score = [], loop.score

        def recording_score(cfg, groups, cot, counters):
            if cot:
                sampled.append([t for g in groups for t, off in zip(g.texts, g.offpolicy) if not off])
            return real_score(cfg, groups, cot, counters)

        loop.score = recording_score
        rows = {}
        for think in ("train", "mask"):
            for seed in range(args.seeds):
                cfg = replace(base, strategy="shaping", gt_think_loss=think, seed=seed, max_new_tokens=size.cot_max_new_tokens,
                              stages=[{"mode": "cot", "steps": args.cot_steps}])
                sampled.clear()
                metrics, logs, generations = run(cfg, ("cot",), size.cot_max_new_tokens)
                stats = think_stats([g["cot"]["text"] for g in generations if "cot" in g])
                late = think_stats([t for step in sampled[len(sampled) // 2:] for t in step]) if sampled else {}
                train_format = float(np.mean([r["format/rate"] for r in logs if r.get("format/rate") is not None]))
                rows.setdefault(think, []).append((metric_key(metrics["cot"], "mIoU"), stats["format_rate"], stats["gt_sentence_share"],
                                                   late.get("format_rate", np.nan), late.get("distinct_thinks", np.nan),
                                                   late.get("gt_sentence_share", np.nan), late.get("distinct_2", np.nan)))
                print(f"  B gt_think_loss={think:5s} seed {seed}: CoT mIoU {rows[think][-1][0]:5.1f}  greedy {stats}  "
                      f"sampled, 2nd half of the stage ({sum(map(len, sampled[len(sampled) // 2:]))} texts) {late}  "
                      f"training format rate {train_format:.2f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
        print(f"\nB. GT think sentence, {args.seeds} seed(s) x {args.cot_steps} CoT steps (strategy shaping), "
              f"{len(test)} held-out queries, greedy CoT answers (mean ± std over seeds)")
        print("| gt_think_loss | CoT mIoU (greedy) | format rate (greedy) | = GT sentence (greedy) | format rate (sampled) "
              "| distinct thinks / thinks (sampled) | = GT sentence (sampled) | distinct word bigrams (sampled) |")
        print("|---|---|---|---|---|---|---|---|")
        for think, values in rows.items():
            v = np.array(values)
            print(f"| {think} | " + " | ".join(mean_std(v[:, k]) for k in range(v.shape[1])) + " |")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
