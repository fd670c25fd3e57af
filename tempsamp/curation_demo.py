"""`tempsamp demo --compare-curation`: data curation against GT guidance, in the demo's miniature.

The same synthetic benchmark and start model as `tempsamp demo`; five ways to train at EQUAL
generation cost (every run stops once its sampled completions hold the same number of tokens,
``max_generated_tokens``; dropped groups count), 3 seeds each, evaluated greedily on the same
held-out queries, and `tempsamp compare` (paired bootstrap over queries and seeds) on each against
plain GRPO and the two selections against their unselected arm:

  grpo             plain GRPO on all training queries
  grpo+dynamic     GRPO with dynamic sampling (tied groups dropped and refilled)
  grpo+selected    GRPO on a difficulty-stratified subset (the start model's mean IoU over K samples)
  tempsamp         the demo's best GT-guided strategy (anchor in its measured table)
  tempsamp+selected  the same on the difficulty-stratified subset

Nothing is tuned per arm. Reported as measured, a null result included.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from tempsamp.demo import (DEMO_THREADS, FRAME_PIXELS, FULL, DemoSize, METRICS, PREBUILT_START_MODEL, RL_LEARNING_RATE, SYNTH_KNOBS, log,
                           metric_key, settings_digest, significance_rows)

TEMPSAMP_STRATEGY = "anchor"  # the demo's best single off-policy strategy in its measured table (README, "The demo")
DIFFICULTY_SAMPLES = 8  # as `data difficulty` by default (and TimeLens): a mean IoU over 8 samples
SELECT_FRACTION = 0.5  # the selected subset: half the training queries, spread evenly over 10 bins of mean IoU
PAIRS = (("grpo+dynamic", "grpo"), ("grpo+selected", "grpo"), ("tempsamp", "grpo"), ("tempsamp+selected", "grpo"),
         ("tempsamp+selected", "tempsamp"))


def arms(tempsamp_strategy: str) -> dict[str, dict]:
    return {
        "grpo": {"strategy": "grpo"},
        "grpo+dynamic": {"strategy": "grpo", "dynamic_sampling": True},
        "grpo+selected": {"strategy": "grpo", "select": "stratified"},
        "tempsamp": {"strategy": tempsamp_strategy},
        "tempsamp+selected": {"strategy": tempsamp_strategy, "select": "stratified"},
    }


def run_curation_demo(out_dir="demo-curation-out", work_dir=".cache/demo", size: DemoSize = FULL,
                      tempsamp_strategy: str = TEMPSAMP_STRATEGY, threads: int = DEMO_THREADS) -> Path:
    """The comparison at ``size`` (the demo's FULL: its data, start model, RL steps, seeds and held-out
    queries; the tests run a very small one); returns the report folder."""
    from tempsamp.data.difficulty import sample_difficulty, summary
    from tempsamp.data.readers import load_examples
    from tempsamp.data.synth import synthesize
    from tempsamp.evaluation.compare import compare
    from tempsamp.evaluation.inference import VideoSettings, evaluate
    from tempsamp.train.checkpoint import latest_checkpoint
    from tempsamp.train.config import TrainConfig
    from tempsamp.train.logger import read_metrics
    from tempsamp.train.loop import train
    from tempsamp.train.sft import SFTConfig, ensure_start_model
    from tempsamp.threads import set_threads

    rl_steps, seeds = size.rl_steps, size.seeds
    out, work = Path(out_dir), Path(work_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    threads = set_threads(threads)
    video = VideoSettings(min_pixels=FRAME_PIXELS, max_pixels=FRAME_PIXELS, total_pixels=FRAME_PIXELS * 128,
                          frame_cache=str(work / "frames"))
    data = Path(synthesize(work / "synth", n=size.n_videos, seed=0, **SYNTH_KNOBS))
    train_examples = load_examples(data / "train.jsonl", "jsonl")
    test = load_examples(data / "test.jsonl", "jsonl")[:size.eval_queries]
    start = ensure_start_model(work / "start-model", data / "train.jsonl", SFTConfig(
        steps=size.sft_steps, **vars(video)), prebuilt=PREBUILT_START_MODEL)

    log(f"1/3 difficulty: {DIFFICULTY_SAMPLES} samples per training query with the start model")
    difficulty = work / "curation" / f"difficulty-k{DIFFICULTY_SAMPLES}.jsonl"
    records = sample_difficulty(str(start), train_examples, difficulty, samples=DIFFICULTY_SAMPLES, temperature=1.0,
                                video=video, max_new_tokens=size.max_new_tokens, batch_size=8, progress=False,
                                say=lambda _: None)
    difficulty_summary = summary(records)
    print(difficulty_summary, flush=True)

    # The budget: what plain GRPO's rl_steps would generate if every answer took the demo's answer
    # length (21 tokens + stop, or max_new_tokens if fewer); every arm stops when it has generated as much.
    budget = rl_steps * size.queries_per_step * size.num_generations * min(22, size.max_new_tokens)
    base = TrainConfig(
        model=str(start), train_annotations=str(data / "train.jsonl"), dataset="jsonl",
        num_generations=size.num_generations, max_new_tokens=size.max_new_tokens, queries_per_step=size.queries_per_step,
        learning_rate=RL_LEARNING_RATE, beta=0.0, temperature=1.0, **vars(video), save_every=10**9, keep_last=1, threads=threads,
        difficulty_file=str(difficulty), select_n=int(len(train_examples) * SELECT_FRACTION),
        max_generated_tokens=budget, stages=[{"mode": "answer", "steps": 4 * rl_steps}],
    )
    eval_kwargs = dict(video=video, max_new_tokens=size.max_new_tokens, progress=False, overwrite=True, say=lambda _: None)
    plan = arms(tempsamp_strategy)
    log(f"2/3 RL: {len(plan)} arms x {seeds} seeds, each until {budget} generated tokens")
    results = {name: [] for name in plan}
    predictions = {name: [] for name in plan}
    for seed in range(seeds):
        for name, keys in plan.items():
            cfg = replace(base, seed=seed, **keys)
            run_dir = work / "curation" / f"{name}-seed{seed}-{settings_digest(cfg)}"
            cfg = replace(cfg, output_dir=str(run_dir)).validate()
            train(cfg, resume=True)
            rows = read_metrics(run_dir)
            model_dir = latest_checkpoint(run_dir) / "model"
            metrics = evaluate(str(model_dir), test, run_dir / "eval", ("answer",), **eval_kwargs)["answer"]
            results[name].append({"metrics": metrics, "steps": len(rows),
                                  "tokens": int(sum(r.get("tokens/generated", 0) for r in rows)),
                                  "dropped": int(sum(r.get("dynamic/dropped_groups") or 0 for r in rows))})
            predictions[name].append(run_dir / "eval" / "predictions_answer.jsonl")
            log(f"   {name:18s} seed {seed}: {len(rows):3d} steps, {results[name][-1]['tokens']} tokens, "
                f"held-out mIoU {metric_key(metrics, 'mIoU'):5.1f}")

    log("3/3 report")
    significance = []
    for a, b in PAIRS:
        r = compare(predictions[b], predictions[a], examples=test, n_boot=10000)
        significance.append({"pair": [a, b], "metrics": r["metrics"], "n_queries": r["n_queries"], "seeds": r["seeds"]})
    minutes = (time.perf_counter() - t0) / 60
    text = report(results, significance, budget, difficulty_summary, minutes, seeds, len(test), base, tempsamp_strategy)
    (out / "report.md").write_text(text)
    (out / "results.json").write_text(json.dumps({"results": results, "significance": significance, "budget": budget,
                                                  "minutes": minutes}, indent=1, default=str))
    print(text)
    log(f"done in {minutes:.1f} min: {out / 'report.md'}")
    return out


def report(results, significance, budget, difficulty_summary, minutes, seeds, n_test, base, strategy) -> str:
    lines = ["# Data curation vs. GT guidance, in miniature", "",
             f"Equal generation cost: every run stops at {budget} generated tokens (dropped groups included); "
             f"{seeds} seeds; greedy evaluation on {n_test} held-out queries; {minutes:.1f} min in all. "
             f"TempSamp = `{strategy}`; selected = {base.select_n} training queries stratified over 10 bins of the "
             f"start model's mean IoU ({DIFFICULTY_SAMPLES} samples each).", "",
             "| arm (held-out %, mean ± std over seeds) | steps | tokens | dropped groups | "
             + " | ".join(METRICS) + " |", "|---|---|---|---|" + "---|" * len(METRICS)]
    for name, runs in results.items():
        cells = [f"{np.mean([r[k] for r in runs]):.0f}" for k in ("steps", "tokens", "dropped")]
        for m in METRICS:
            v = np.array([metric_key(r["metrics"], m) for r in runs])
            cells.append(f"{v.mean():.1f} ± {v.std():.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    n_tests = 2 * len(significance)
    lines += ["", "`tempsamp compare` (first minus second, paired bootstrap over queries and seeds, 10000 replicates; "
              f"bold: p < 0.05 alone; {n_tests} p-values, so one in twenty is expected by chance, and the Bonferroni "
              f"threshold for all {n_tests} together is {0.05 / n_tests:.4f}):", "",
              "| comparison | mIoU diff [95% CI], p | R1@0.5 diff [95% CI], p |", "|---|---|---|",
              *significance_rows(significance)]
    lines += ["", "Start model's difficulty over the training queries:", "", "```", difficulty_summary, "```", ""]
    return "\n".join(lines)
