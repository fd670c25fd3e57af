"""`tempsamp plot RUN_DIR`: a run's metrics.jsonl as PNG curves."""

from __future__ import annotations

from pathlib import Path

from tempsamp.train.logger import read_metrics

PANELS = [
    ("reward", ["reward/raw", "reward/shaped", "reward/offpolicy"]),
    ("iou", ["iou/top1_onpolicy", "iou/mean_onpolicy"]),
    ("advantage", ["adv/offpolicy", "adv/frac_onpolicy_negative", "adv/frac_offpolicy_zero"]),
    ("format", ["format/rate", "parse/failure_rate"]),
    ("policy", ["loss/kl", "loss/kl_offpolicy", "loss/clip_fraction", "policy/entropy"]),
    ("length", ["completion/length"]),
    ("speed", ["speed/step_seconds", "speed/tokens_per_second"]),
    ("memory", ["memory/peak_gb"]),
]


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    out = Path(out_dir or Path(run_dir) / "plots")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, keys in PANELS:
        present = [k for k in keys if any(r.get(k) is not None for r in rows)]
        if not present:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for key in present:
            pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=key)
        ax.set_xlabel("step")
        ax.set_title(name)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
