"""`tempsamp plot RUN_DIR`: a run's metrics.jsonl as PNG curves.

One PNG per panel; inside a panel, one axis per quantity (curves share an axis only when they
measure the same thing, e.g. the three rewards), so a large entropy does not flatten the KL.
Points are marked (a one-step run shows a point), steps are whole numbers, and the boundaries
between the recipe's stages (config.yaml) are drawn as dashed lines labelled with the stage's mode.
"""

from __future__ import annotations

from pathlib import Path

from tempsamp.train.logger import read_metrics

# (panel, [axis, ...]); an axis is the keys drawn on it (same quantity)
PANELS = [
    ("loss", [["loss/value"]]),
    ("lr", [["lr"]]),
    ("reward", [["reward/raw", "reward/shaped", "reward/offpolicy"]]),
    ("iou", [["iou/top1_onpolicy", "iou/mean_onpolicy"]]),
    ("advantage", [["adv/offpolicy"], ["adv/frac_onpolicy_negative", "adv/frac_offpolicy_zero"]]),
    ("format", [["format/rate", "parse/failure_rate"]]),
    ("policy", [["loss/kl", "loss/kl_offpolicy"], ["loss/clip_fraction"], ["policy/entropy"]]),
    ("length", [["completion/length"]]),
    ("speed", [["speed/step_seconds"], ["speed/tokens_per_second"]]),
    # where a step's time goes (seconds; the slowest process's per phase; checkpoint: the previous step's save)
    ("phases", [["speed/data_seconds", "speed/rollout_seconds", "speed/reference_seconds", "speed/policy_seconds",
                 "speed/optimizer_seconds", "speed/push_seconds", "speed/checkpoint_seconds"]]),
    ("memory", [["memory/peak_gb"]]),
]


# Human words for the plots: each panel's title, each axis's y label, each curve's legend entry.
TITLES = {
    "loss": "Training loss", "lr": "Learning rate", "reward": "Reward", "iou": "Temporal IoU of the on-policy samples",
    "advantage": "Advantages", "format": "Answer format", "policy": "Policy drift, clipping and entropy",
    "length": "Completion length", "speed": "Speed", "phases": "Where a step's time goes (slowest process per phase)",
    "memory": "Peak memory",
}
Y_LABELS = {
    "loss/value": "loss", "lr": "learning rate", "reward/raw": "mean reward", "iou/top1_onpolicy": "IoU",
    "adv/offpolicy": "GT-row advantage", "adv/frac_onpolicy_negative": "fraction of rows", "format/rate": "fraction of answers",
    "loss/kl": "KL to the reference", "loss/clip_fraction": "fraction of tokens", "policy/entropy": "entropy (nats/token)",
    "completion/length": "tokens", "speed/step_seconds": "seconds per step", "speed/tokens_per_second": "generated tokens/s",
    "speed/data_seconds": "seconds per step", "memory/peak_gb": "GB",
}
CURVE_LABELS = {
    "loss/value": "loss", "lr": "learning rate", "reward/raw": "on-policy samples, raw", "reward/shaped": "on-policy samples, shaped",
    "reward/offpolicy": "ground-truth (off-policy) row", "iou/top1_onpolicy": "best sample of each group",
    "iou/mean_onpolicy": "mean over samples", "adv/offpolicy": "ground-truth row",
    "adv/frac_onpolicy_negative": "on-policy rows below 0", "adv/frac_offpolicy_zero": "ground-truth rows at 0",
    "format/rate": "well-formed", "parse/failure_rate": "no parsable span", "loss/kl": "on-policy rows",
    "loss/kl_offpolicy": "ground-truth row", "loss/clip_fraction": "clipped tokens", "policy/entropy": "entropy",
    "completion/length": "mean completion", "speed/step_seconds": "whole step", "speed/tokens_per_second": "rollout",
    "speed/data_seconds": "data", "speed/rollout_seconds": "rollout", "speed/reference_seconds": "reference",
    "speed/policy_seconds": "policy", "speed/optimizer_seconds": "optimizer", "speed/push_seconds": "weight push",
    "speed/checkpoint_seconds": "checkpoint", "memory/peak_gb": "peak",
}


def read_run_metrics(run_dir: str | Path) -> list[dict]:
    """metrics.jsonl's rows; a UserError when the file is missing or holds no step."""
    from tempsamp.errors import UserError

    path = Path(run_dir) / "metrics.jsonl"
    if not Path(run_dir).is_dir():
        raise UserError(f"{run_dir}: no such folder; pass a training run folder (the run's output_dir)")
    if not path.is_file():
        raise UserError(f"{path}: not found; pass a training run folder (the run's output_dir), "
                        "which holds metrics.jsonl once a step is logged")
    rows = read_metrics(run_dir)
    if not rows:
        raise UserError(f"{path}: holds no logged step yet (empty); plot after the run's first step")
    return rows


def stage_boundaries(run_dir: str | Path) -> list[tuple[int, str]]:
    """(first step of each stage after the first, its mode) from the run's config.yaml, if readable."""
    import yaml

    try:
        stages = yaml.safe_load((Path(run_dir) / "config.yaml").read_text()).get("stages") or []
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        return []
    out, end = [], 0
    for stage in stages[:-1]:
        end += int(stage.get("steps", 0))
        out.append((end, str(stages[len(out) + 1].get("mode", "?"))))
    return out


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from tempsamp.errors import ensure_output_dir

    rows = read_run_metrics(run_dir)
    out = ensure_output_dir(out_dir or Path(run_dir) / "plots", "plot folder")
    last_step = max(r["step"] for r in rows)
    boundaries = [(step, mode) for step, mode in stage_boundaries(run_dir) if step < last_step]  # inside the curves
    written = []
    for name, axes_keys in PANELS:
        axes_keys = [[k for k in keys if any(r.get(k) is not None for r in rows)] for keys in axes_keys]
        axes_keys = [keys for keys in axes_keys if keys]
        if not axes_keys:
            continue
        fig, axes = plt.subplots(len(axes_keys), 1, figsize=(6, 2.2 + 1.6 * len(axes_keys)), sharex=True, squeeze=False)
        for ax, keys in zip(axes[:, 0], axes_keys):
            for key in keys:
                pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=CURVE_LABELS.get(key, key))
            ax.set_ylabel(Y_LABELS.get(keys[0], CURVE_LABELS.get(keys[0], keys[0])), fontsize=8)
            for step, mode in boundaries:  # stage s starts after `step` steps: between points step and step + 1
                ax.axvline(step + 0.5, color="grey", linestyle="--", linewidth=0.8)
                ax.annotate(mode, (step + 0.5, 1.0), xycoords=("data", "axes fraction"), fontsize=7,
                            ha="left", va="top", color="grey")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.ticklabel_format(axis="y", useOffset=False)  # values as they are, not as an offset + 1e-6 steps
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
        axes[-1, 0].set_xlabel("step")
        axes[0, 0].set_title(TITLES.get(name, name))
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
