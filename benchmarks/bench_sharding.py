"""One training step per sharding mode, side by side in one run, as ratios to DDP.

Each mode trains the tiny model with 2 gloo processes through the documented command
(`tempsamp train tiny_cpu distributed=MODE --num-processes 2`), for 3 steps; a step's time is read
from the run's own log (`speed/step_seconds`, rollout + reference + loss + optimizer step) and the
first step (warm-up) is left out. The modes run one after the other, twice, interleaved
(ddp fsdp zero2 zero3 ddp fsdp ...), so a machine that gets busier part-way hits every mode alike;
the ratio uses each mode's median. Also printed: the whole launch's wall time (process start-up,
imports, DeepSpeed initialisation dominate on a tiny model) and the peak RSS per process.

    python benchmarks/bench_sharding.py [--modes ddp,fsdp,zero2,zero3] [--rounds 2]

On a 2-core machine the tiny model's step is dominated by fixed costs (collectives, Python), so
the ratios say what each engine adds per step, not how a 7B model scales.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def make_data(root: Path) -> Path:
    from video_files import write_video

    rows = []
    for i, span in enumerate([(2.0, 5.0), (4.0, 7.5), (1.0, 3.0), (0.5, 6.0), (3.0, 4.0)]):
        write_video(root / f"v{i}.mp4", 8.0, span)
        rows.append({"video": f"v{i}.mp4", "duration": 8.0, "query": "when is the red square visible?", "spans": [list(span)]})
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "train.jsonl"


def run_mode(mode: str, model: Path, annotations: Path, out: Path) -> dict:
    args = {
        "model": str(model), "train_annotations": str(annotations), "dataset": "jsonl", "output_dir": str(out),
        "num_generations": 4, "max_new_tokens": 8, "queries_per_step": 4, "learning_rate": 1e-3, "beta": 0.04,
        "min_pixels": 3136, "max_pixels": 3136, "total_pixels": 3136 * 32, "save_every": 100, "frame_cache": None,
        "stages": [{"mode": "answer", "steps": 3}], "distributed": mode,
    }
    command = [sys.executable, "-m", "tempsamp", "train", "tiny_cpu",
               *[f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in args.items()], "--num-processes", "2"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{mode}: exit {done.returncode}\n{done.stderr[-3000:]}")
    layout = json.loads((out / "layout.json").read_text())
    assert layout[0]["world_size"] == 2 and layout[0]["distributed"] == mode, layout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["speed/step_seconds"] for r in rows if "speed/step_seconds" in r][1:]
    return {"step": statistics.median(steps), "wall": wall, "peak_gb": max(r.get("memory/peak_gb", 0) for r in rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", default="ddp,fsdp,zero2,zero3")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    modes = args.modes.split(",")

    from tempsamp.models.tiny import TinySpec, ensure_tiny_model

    model = ensure_tiny_model(spec=TinySpec(vocab="small"))
    results: dict[str, list] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        annotations = make_data(Path(tmp))
        for r in range(args.rounds):
            for mode in modes:
                results[mode].append(run_mode(mode, model, annotations, Path(tmp) / f"{mode}-{r}"))

    base = statistics.median(x["step"] for x in results[modes[0]])
    print(f"2 gloo processes, tiny model (small vocabulary), G = 4, 4 queries per step; median of {args.rounds} runs")
    print(f"{'mode':<14}{'step s':>9}{'x ' + modes[0]:>10}{'launch s':>10}{'peak GB':>9}")
    for mode in modes:
        step = statistics.median(x["step"] for x in results[mode])
        wall = statistics.median(x["wall"] for x in results[mode])
        peak = max(x["peak_gb"] for x in results[mode])
        print(f"{mode:<14}{step:>9.3f}{step / base:>10.2f}{wall:>10.1f}{peak:>9.2f}")


if __name__ == "__main__":
    main()
