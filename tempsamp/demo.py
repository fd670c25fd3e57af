"""`tempsamp demo`: the paper's ablation in miniature, on a CPU, from nothing.

synthetic benchmark -> start model (supervised, as the paper starts from an instruction-tuned
model) -> RL with each strategy (grpo, reward_scaling, anchor, shaping) over several seeds ->
hybrid CoT on the best -> evaluation on held-out synthetic videos -> a report folder with the
paper-style table, curves, and an honest verdict on the paper's claims.

Nothing here is tuned to force an outcome: every strategy gets the same start model, data, steps,
learning rate and seeds, and the report states whether the paper's ordering holds.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from tempsamp.errors import nonnegative_int

STRATEGIES = ("grpo", "reward_scaling", "anchor", "shaping")
PAPER_ORDER = ("shaping", "anchor", "reward_scaling", "grpo")  # shaping >= anchoring >= scaling >= GRPO
METRICS = ("R1@0.3", "R1@0.5", "R1@0.7", "mIoU")
# One intra-op thread: the tiny model's products are too small to gain from more, and on a shared
# machine threads that wait for each other slow the demo far more than the CPU it loses
# (benchmarks/bench_contention.py; docs/decisions.md, "Threads").
DEMO_THREADS = 1
# One learning rate for every strategy (nothing tuned per strategy).
RL_LEARNING_RATE = 2e-4


@dataclass
class DemoSize:
    """How big the miniature is. ``full`` is meant to fit 15 minutes on 2 cores, ``quick`` 3."""

    n_videos: int
    seeds: int
    sft_steps: int
    rl_steps: int
    cot_steps: int
    eval_queries: int
    queries_per_step: int = 4
    num_generations: int = 6
    max_new_tokens: int = 24  # an answer is 21 tokens + the stop token with the start model's vocabulary
    cot_max_new_tokens: int = 72  # the GT's CoT completion is 60 tokens


# Both sizes share the data and the start model (built once, then reused from the work folder).
FULL = DemoSize(n_videos=300, seeds=3, sft_steps=500, rl_steps=20, cot_steps=8, eval_queries=50)
QUICK = DemoSize(n_videos=300, seeds=1, sft_steps=500, rl_steps=6, cot_steps=3, eval_queries=20)

# The synthetic task (tempsamp.data.synth): one object per 20-s video, visible during one span of
# 2-6 s placed uniformly at random; the query names it. Reading the video is the only way to the
# answer (the text gives no hint of the span). Why so plain: a tiny model trained for a minute or two
# on a CPU does not learn to pick one of several objects by the query (tried: 2-3 objects or
# grow/recolor events with distractors stayed at the text-only prior in 600 supervised steps), while
# it does learn to read *when* a single object is on screen through Qwen2.5-VL's time-aware positions.
SYNTH_KNOBS = {"objects": 1, "kinds": ["appear"], "queries_per_video": 1, "distractors": 0,
               "duration": [20.0, 20.0], "event_length": [2.0, 6.0]}
# The start model for FULL/QUICK, committed (4.7 MB) so `make demo` spends its minutes on RL. It is used
# only when its recorded digest matches this data and SFTConfig (else the demo trains its own);
# rebuild it with `python scripts/build_demo_start_model.py`.
PREBUILT_START_MODEL = Path(__file__).resolve().parents[1] / "assets" / "demo-start-model"
# One pixel budget for every stage: 56x56 per frame = 4 video tokens per 1-s grid slice.
FRAME_PIXELS = 56 * 56


def settings_digest(cfg) -> str:
    """A run folder per setting: a finished run is reused only when nothing in its settings changed."""
    settings = {k: v for k, v in cfg.to_dict().items() if k not in ("output_dir", "threads")}  # where, how fast: not what
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:8]


def log(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def metric_key(metrics: dict, name: str) -> float:
    for key in (name, name.replace("@", "_"), name.lower()):
        if key in metrics:
            return float(metrics[key])
    raise KeyError(f"metric {name} not in {sorted(metrics)}")


def run_demo(out_dir: str | Path = "demo-out", quick: bool = False, work_dir: str | Path = ".cache/demo",
             size: DemoSize | None = None, threads: int = DEMO_THREADS) -> Path:
    """The whole miniature; ``size`` overrides FULL/QUICK (the tests run a very small one).

    threads: torch's intra-op threads for every stage (0: tempsamp.threads' automatic choice)."""
    from tempsamp.threads import set_threads

    threads = set_threads(threads)
    from tempsamp.data.readers import load_examples
    from tempsamp.data.synth import synthesize
    from tempsamp.evaluation.inference import VideoSettings, evaluate
    from tempsamp.train.config import TrainConfig
    from tempsamp.train.logger import read_metrics
    from tempsamp.train.loop import train
    from tempsamp.train.sft import SFTConfig, ensure_start_model

    if size is not None:
        size_name = "custom"
    else:
        size, size_name = (QUICK, "quick") if quick else (FULL, "full")
    out, work = Path(out_dir), Path(work_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    video = VideoSettings(min_pixels=FRAME_PIXELS, max_pixels=FRAME_PIXELS, total_pixels=FRAME_PIXELS * 128,
                          frame_cache=str(work / "frames"))

    log(f"1/5 synthetic benchmark: {size.n_videos} videos of 20 s")
    data = Path(synthesize(work / "synth", n=size.n_videos, seed=0, **SYNTH_KNOBS))
    test = load_examples(data / "test.jsonl", "jsonl")[: size.eval_queries]

    log(f"2/5 start model: {size.sft_steps} supervised steps on the synthetic training split")
    start = ensure_start_model(work / "start-model", data / "train.jsonl", SFTConfig(
        steps=size.sft_steps, **vars(video)), prebuilt=PREBUILT_START_MODEL)
    base = TrainConfig(
        model=str(start), train_annotations=str(data / "train.jsonl"), dataset="jsonl",
        num_generations=size.num_generations, max_new_tokens=size.max_new_tokens, queries_per_step=size.queries_per_step,
        learning_rate=RL_LEARNING_RATE, beta=0.0, temperature=1.0, **vars(video), save_every=10**9, keep_last=1, threads=threads,
    )
    # overwrite: answers made by another model or settings (an older demo's) are replaced, not refused
    eval_kwargs = dict(video=video, max_new_tokens=size.max_new_tokens, progress=False, overwrite=True, say=lambda _: None)

    log(f"   evaluating the start model on {len(test)} held-out queries")
    start_metrics = evaluate(str(start), test, work / f"eval-start-{size_name}", ("answer",), **eval_kwargs)["answer"]
    log(f"   start model: mIoU {metric_key(start_metrics, 'mIoU'):.1f}  R1@0.5 {metric_key(start_metrics, 'R1@0.5'):.1f}")

    runs: dict[str, list[dict]] = {s: [] for s in STRATEGIES}
    curves: dict[str, list[list[dict]]] = {s: [] for s in STRATEGIES}
    predictions: dict[str, list[Path]] = {s: [] for s in STRATEGIES}  # one file per seed, for `compare`
    log(f"3/5 RL: {len(STRATEGIES)} strategies x {size.seeds} seeds x {size.rl_steps} steps "
        f"({size.queries_per_step} queries x G = {size.num_generations} per step)")
    for seed in range(size.seeds):
        for strategy in STRATEGIES:
            cfg = replace(base, strategy=strategy, seed=seed, stages=[{"mode": "answer", "steps": size.rl_steps}])
            run_dir = work / f"runs-{size_name}" / f"{strategy}-seed{seed}-{settings_digest(cfg)}"
            cfg = replace(cfg, output_dir=str(run_dir)).validate()
            train(cfg, resume=True)
            model_dir = run_dir / f"checkpoint-{cfg.total_steps}" / "model"
            metrics = evaluate(str(model_dir), test, run_dir / "eval", ("answer",), **eval_kwargs)["answer"]
            runs[strategy].append(metrics)
            curves[strategy].append(read_metrics(run_dir))
            predictions[strategy].append(run_dir / "eval" / "predictions_answer.jsonl")
            top1 = window_mean(curves[strategy][-1], "iou/top1_onpolicy", first=False)
            log(f"   {strategy:15s} seed {seed}: held-out mIoU {metric_key(metrics, 'mIoU'):5.1f}  "
                f"R1@0.5 {metric_key(metrics, 'R1@0.5'):5.1f}  top-1 on-policy IoU (last 5 steps) {top1:.2f}")

    means = {s: np.mean([metric_key(m, "mIoU") for m in runs[s]]) for s in STRATEGIES}
    best = max(STRATEGIES[1:], key=lambda s: means[s])
    log(f"4/5 hybrid CoT on the best off-policy strategy ({best}): {size.rl_steps} answer + {size.cot_steps} CoT steps")
    cot_runs = []
    hybrid: dict[str, list[Path]] = {m: [] for m in HYBRID_MODES}  # the hybrid runs' predictions per mode
    for seed in range(size.seeds):
        cfg = replace(base, strategy=best, seed=seed, max_new_tokens=size.cot_max_new_tokens,
                      stages=[{"mode": "answer", "steps": size.rl_steps}, {"mode": "cot", "steps": size.cot_steps}])
        run_dir = work / f"runs-{size_name}" / f"{best}-cot-seed{seed}-{settings_digest(cfg)}"
        cfg = replace(cfg, output_dir=str(run_dir)).validate()
        train(cfg, resume=True)
        model_dir = run_dir / f"checkpoint-{cfg.total_steps}" / "model"
        cot_runs.append(evaluate(str(model_dir), test, run_dir / "eval", ("answer", "cot", "mixed", "mixed-oracle"),
                                 **dict(eval_kwargs, max_new_tokens=size.cot_max_new_tokens)))
        for mode in HYBRID_MODES:
            hybrid[mode].append(run_dir / "eval" / f"predictions_{mode}.jsonl")
        log(f"   seed {seed}: " + "  ".join(f"{m} mIoU {metric_key(cot_runs[-1][m], 'mIoU'):.1f}" for m in cot_runs[-1]))

    log("5/5 report")
    minutes = (time.perf_counter() - t_start) / 60
    setup = {"size": asdict(size), "synthetic data": SYNTH_KNOBS, "frame pixels": FRAME_PIXELS, "fps": video.fps,
             "RL learning rate": RL_LEARNING_RATE, "beta (KL)": base.beta, "temperature": base.temperature,
             "start model": str(start), "work folder": str(work)}
    write_report(out, size, start_metrics, runs, curves, best, cot_runs, minutes, setup,
                 significance=strategy_significance(predictions, test, hybrid=hybrid))
    log(f"done in {minutes:.1f} min: {out / 'report.md'}")
    return out


def mean_std(values) -> str:
    values = np.asarray(values, dtype=float)
    return f"{values.mean():.1f} ± {values.std():.1f}" if len(values) > 1 else f"{values.mean():.1f}"


def window_mean(run: list[dict], key: str, first: bool, n: int = 5) -> float:
    """Mean of a logged scalar over the first (or last) n steps of one run."""
    rows = run[:n] if first else run[-n:]
    values = [r.get(key) for r in rows if r.get(key) is not None]
    return float(np.mean(values)) if values else float("nan")


# Strategy pairs the report tests (higher in the paper's order first): the paper's ordering, then
# every GT-guided strategy against GRPO.
SIGNIFICANCE_PAIRS = (("shaping", "anchor"), ("anchor", "reward_scaling"), ("reward_scaling", "grpo"),
                      ("anchor", "grpo"), ("shaping", "grpo"))


# The hybrid CoT model's deployable modes against its answer-only mode (the paper's mixed > answer).
HYBRID_MODES = ("answer", "cot", "mixed")
HYBRID_PAIRS = (("cot", "answer"), ("mixed", "answer"))


def strategy_significance(predictions: dict, examples: list, n_boot: int = 10000, hybrid: dict | None = None) -> list[dict]:
    """``tempsamp compare`` on each pair of SIGNIFICANCE_PAIRS (and, given the hybrid runs' files per
    mode, HYBRID_PAIRS): (first) - (second) per metric, with a paired bootstrap over the held-out
    queries and the seeds (tempsamp.evaluation.compare)."""
    from tempsamp.evaluation.compare import compare

    jobs = [([better, worse], predictions[better], predictions[worse]) for better, worse in SIGNIFICANCE_PAIRS]
    if hybrid:
        jobs += [([f"hybrid {a}", f"hybrid {b}"], hybrid[a], hybrid[b]) for a, b in HYBRID_PAIRS]
    out = []
    for pair, first, second in jobs:
        result = compare(second, first, examples=examples, n_boot=n_boot)
        out.append({"pair": pair, "n_queries": result["n_queries"], "seeds": result["seeds"], "metrics": result["metrics"]})
    return out


def verdict(runs: dict, curves: dict, significance: list | None = None) -> dict:
    """The paper's two claims, read off this run's numbers (pure: unit-tested on made-up numbers).

    With ``significance`` (strategy_significance), "resolved" means the bootstrap 95% interval of each
    mIoU gap excludes 0; without it, that each gap exceeds the largest seed-to-seed std."""
    means = {s: float(np.mean([metric_key(r, "mIoU") for r in runs[s]])) for s in STRATEGIES}
    spread = max(float(np.std([metric_key(r, "mIoU") for r in runs[s]])) for s in STRATEGIES)
    order = sorted(STRATEGIES, key=lambda s: -means[s])
    top1 = {s: (float(np.mean([window_mean(c, "iou/top1_onpolicy", True) for c in curves[s]])),
                float(np.mean([window_mean(c, "iou/top1_onpolicy", False) for c in curves[s]]))) for s in STRATEGIES}
    guided = [s for s in STRATEGIES if s != "grpo"]
    return {
        "means": means,
        "largest_std": spread,
        "observed_order": order,
        "order_holds": all(means[a] >= means[b] for a, b in zip(PAPER_ORDER, PAPER_ORDER[1:])),
        # within one seed-to-seed std of each other, an ordering is not evidence either way
        "order_resolved": (all(_significant(significance, a, b) for a, b in zip(PAPER_ORDER, PAPER_ORDER[1:]))
                           if significance else
                           all(abs(means[a] - means[b]) > spread for a, b in zip(PAPER_ORDER, PAPER_ORDER[1:]))),
        "top1_first_last": top1,
        "guided_top1_above_0.6": all(top1[s][1] > 0.6 for s in guided),
        "grpo_top1_below_0.6": top1["grpo"][1] <= 0.6,
        "guided_beats_grpo": all(means[s] > means["grpo"] for s in guided),
        "guided_beats_grpo_significantly": (all(_significant(significance, s, "grpo") and means[s] > means["grpo"]
                                                for s in guided) if significance else None),
    }


def _significant(significance: list, a: str, b: str, metric: str = "mIoU") -> bool:
    """Whether the a-vs-b mIoU gap's 95% interval excludes 0 (either sign)."""
    for entry in significance:
        if set(entry["pair"]) == {a, b}:
            return bool(entry["metrics"][metric]["significant"])
    raise KeyError(f"no significance test for {a} vs {b}")


def significance_lines(significance: list) -> list[str]:
    """The report's table of strategy differences (B - A, 95% interval, p) and how to read it."""
    if not significance:
        return []
    first = significance[0]
    lines = ["## Which differences are significant?", "",
             f"`tempsamp compare` on the held-out predictions: difference in points (first minus second), paired "
             f"bootstrap over the {first['n_queries']} queries"
             + (f" and the {first['seeds'][0]} seeds of each side" if max(first["seeds"]) > 1 else "")
             + " (10000 replicates); **bold** = the 95% interval excludes 0.", "",
             "| comparison | mIoU difference [95% interval], p | R1@0.5 difference [95% interval], p |", "|---|---|---|"]
    return lines + significance_rows(significance) + [""]


def significance_rows(significance: list[dict]) -> list[str]:
    """One table row per compared pair: mIoU and R1@0.5 differences, 95% intervals and p (bold: significant)."""
    from tempsamp.evaluation.compare import p_text

    rows = []
    for entry in significance:
        cells = []
        for metric in ("mIoU", "R1@0.5"):
            r = entry["metrics"][metric]
            text = f"{r['diff']:+.1f} [{r['ci95'][0]:+.1f}, {r['ci95'][1]:+.1f}], {p_text(r['p'])}"
            cells.append(f"**{text}**" if r["significant"] else text)
        rows.append(f"| {entry['pair'][0]} - {entry['pair'][1]} | " + " | ".join(cells) + " |")
    return rows


def write_report(out: Path, size: DemoSize, start: dict, runs: dict, curves: dict, best: str, cot_runs: list,
                 minutes: float, setup: dict | None = None, significance: list | None = None) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    v = verdict(runs, curves, significance)
    rows = ["| configuration | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    rows.append("| start model (supervised) | " + " | ".join(f"{metric_key(start, m):.1f}" for m in METRICS) + " |")
    for s in STRATEGIES:
        rows.append(f"| {s} | " + " | ".join(mean_std([metric_key(r, m) for r in runs[s]]) for m in METRICS) + " |")
    for mode, label in (("answer", "answer-only"), ("cot", "CoT"), ("mixed", "mixed (deployable)"),
                        ("mixed-oracle", "mixed-oracle (UPPER BOUND, uses GT)")):
        rows.append(f"| {best} + hybrid CoT, {label} | "
                    + " | ".join(mean_std([metric_key(r[mode], m) for r in cot_runs]) for m in METRICS) + " |")

    # curves: reward and top-1 on-policy IoU per step, mean over seeds, smoothed over 5 steps
    for key, name, title, ylabel in (
            ("reward/raw", "reward", "Reward of the on-policy samples", "mean task reward"),
            ("iou/top1_onpolicy", "top1_iou", "IoU of the best on-policy sample per query", "IoU")):
        fig, ax = plt.subplots(figsize=(6.5, 3.8))
        for s in STRATEGIES:
            series = [[r.get(key) if r.get(key) is not None else np.nan for r in run] for run in curves[s]]
            n = min(len(x) for x in series)
            mean = np.nanmean(np.array([x[:n] for x in series], dtype=float), 0)
            smooth = np.convolve(mean, np.ones(5) / 5, mode="valid") if n >= 5 else mean
            ax.plot(np.arange(len(smooth)) + (n - len(smooth) + 1), smooth, label=s)
        ax.set_xlabel("RL step")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}\n(mean of {size.seeds} seed{'s' if size.seeds > 1 else ''}, 5-step moving average)",
                     fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=100)
        plt.close(fig)

    top1 = v["top1_first_last"]
    if significance:
        seeds_note = ("every gap in the paper's order is significant (bootstrap 95% interval excludes 0)."
                      if v["order_resolved"] else
                      "not every gap in the paper's order is significant (see the table below), so that part of the "
                      "ordering is noise, not evidence.")
    else:
        seeds_note = (f"largest seed-to-seed std {v['largest_std']:.1f} mIoU points; "
                      + ("every gap in the paper's order is larger than that." if v["order_resolved"]
                         else "some gaps are smaller than that, so that part of the ordering is noise, not evidence.")
                      if size.seeds > 1 else "one seed, so no spread is measured: read the ordering as anecdote.")
    guided_significant = v.get("guided_beats_grpo_significantly")
    lines = [
        "# TempSamp-R1 in miniature", "",
        f"{size.n_videos} synthetic videos (20 s, one object on screen for 2-6 s; the query names it). "
        f"Start model: a tiny Qwen2.5-VL trained with {size.sft_steps} supervised steps. "
        f"RL: {size.seeds} seed(s) per strategy, {size.rl_steps} steps of {size.queries_per_step} queries x G = "
        f"{size.num_generations}, identical for every strategy. Evaluation: greedy, {size.eval_queries} held-out queries "
        f"(videos never seen in training). Wall time {minutes:.1f} min.", "",
        "## Held-out grounding (percent; mean ± std over seeds)", "", *rows, "",
        "## Does the paper's claim hold here?", "",
        f"- Ordering shaping >= anchoring >= scaling >= GRPO, by mean mIoU: **{'holds' if v['order_holds'] else 'does not hold'}**. "
        f"Observed: {' > '.join(v['observed_order'])}; {seeds_note}",
        f"- Off-policy guidance beats plain GRPO (every GT-guided strategy above GRPO in mean mIoU): "
        f"**{'yes' if v['guided_beats_grpo'] else 'no'}**"
        + ("" if guided_significant is None else
           f"; significantly for every one of them: **{'yes' if guided_significant else 'no'}**") + ".",
        "- Top-1 on-policy IoU, first 5 -> last 5 RL steps: "
        + ", ".join(f"{s} {top1[s][0]:.2f} -> {top1[s][1]:.2f}" for s in STRATEGIES) + ". "
        f"The paper: above 0.6 with off-policy guidance (**{'yes' if v['guided_top1_above_0.6'] else 'no'}** here) "
        f"and low without (**{'yes' if v['grpo_top1_below_0.6'] else 'no'}** here: GRPO ends at {top1['grpo'][1]:.2f}).",
        "- How to read it: the paper's differences between strategies are 0.5-1 point on Charades-STA with a 7B model; a "
        "miniature with a tiny model, tens of RL steps and a few seeds has seed noise of that size or larger. The robust "
        "effect to expect is GT-guided versus purely on-policy learning (the toy, `benchmarks/bench_toy.py`, shows the same "
        "on a task with no video model). The start model is already partly right (a supervised stand-in for the paper's "
        "instruction-tuned model), so on-policy samples do reach moderate IoU from the start. Top-1 is the best of "
        f"{size.num_generations} samples for GRPO and of {size.num_generations - 1} for the others, and for a given seed every "
        "strategy sees the same queries at the same step, so the curves move together with the queries' difficulty. "
        "Nothing was tuned per strategy.",
        "",
        *significance_lines(significance),
        "## Set-up", "",
        *[f"- {k}: `{val}`" for k, val in (setup or {}).items()], "",
        "Curves: `reward.png`, `top1_iou.png`. Per-run logs (TensorBoard, metrics.jsonl) and evaluations: the work folder.",
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({"start": start, "runs": runs, "best": best, "cot": cot_runs,
                                                  "minutes": minutes, "verdict": v, "setup": setup,
                                                  "significance": significance}, indent=1, default=float))
    return v


def register(sub) -> None:
    p = sub.add_parser("demo", help="the paper's ablation in miniature on a CPU (synthetic data, tiny model)")
    p.add_argument("--out", default="demo-out", help="report folder")
    p.add_argument("--quick", action="store_true", help="a first look in about 3 minutes (1 seed, few steps)")
    p.add_argument("--work-dir", default=".cache/demo", help="data, models and runs (reused when present)")
    p.add_argument("--threads", type=nonnegative_int, default=DEMO_THREADS,
                   help=f"torch's CPU threads (default {DEMO_THREADS}: the tiny model gains little from more, and on a "
                        "shared machine more threads wait for each other; 0: one per available core)")
    p.add_argument("--compare-curation", action="store_true",
                   help="instead: GRPO, GRPO + dynamic sampling, GRPO on a difficulty-selected subset, TempSamp and "
                        "TempSamp + selection at equal generation cost, 3 seeds (tempsamp/curation_demo.py)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    if args.compare_curation:
        from tempsamp.curation_demo import run_curation_demo

        run_curation_demo(args.out if args.out != "demo-out" else "demo-curation-out", args.work_dir, threads=args.threads)
        return 0
    run_demo(args.out, args.quick, args.work_dir, threads=args.threads)
    return 0
