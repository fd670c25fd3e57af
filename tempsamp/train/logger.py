"""Per-step scalars to ``metrics.jsonl`` (the source of truth, replayable) and TensorBoard."""

from __future__ import annotations

import json
import math
from pathlib import Path


class RunLogger:
    def __init__(self, output_dir: str | Path, tensorboard: bool = True):
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.dir / "metrics.jsonl", "a", buffering=1)
        (self.dir / "events.jsonl").touch()  # always there: empty means no fault, not "not written yet"
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.dir / "tensorboard"))

    def log(self, step: int, scalars: dict) -> None:
        clean = {k: (float(v) if v is not None and math.isfinite(float(v)) else None) for k, v in scalars.items()}
        self._jsonl.write(json.dumps({"step": step, **clean}) + "\n")
        if self._tb is not None:
            for key, value in clean.items():
                if value is not None:
                    self._tb.add_scalar(key, value, step)

    def event(self, step: int, kind: str, message: str) -> None:
        """Faults and notable events (skipped steps, bad videos) in ``events.jsonl``."""
        with open(self.dir / "events.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "kind": kind, "message": message}) + "\n")

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Rows of metrics.jsonl, one per step; a step logged twice (a resumed run) keeps its last row."""
    rows: dict[int, dict] = {}
    path = Path(run_dir) / "metrics.jsonl"
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill mid-write; the step is logged again after resume
            rows[int(row["step"])] = row
    return [rows[s] for s in sorted(rows)]
