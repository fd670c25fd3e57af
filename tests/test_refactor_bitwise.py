"""A change that should not change behaviour does not: a `tiny_cpu` run with the working tree's code
gives bitwise the weights and logged metrics of the same run at a baseline commit
(scripts/loop_fingerprint.py; the baseline: $TEMPSAMP_FINGERPRINT_BASE, else the merge-base with main)."""

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("loop_fingerprint", REPO / "scripts" / "loop_fingerprint.py")
fp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fp)


def fake_run(root: Path, weight: torch.Tensor, metrics: list[dict], queries: tuple = ()) -> Path:
    from safetensors.torch import save_file

    (root / "final-model").mkdir(parents=True)
    save_file({"b.weight": weight, "a.bias": torch.zeros(3)}, str(root / "final-model" / "model.safetensors"))
    (root / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in metrics))
    if queries:
        (root / "queries.jsonl").write_text("".join(json.dumps(line) + "\n" for line in queries))
    return root


def test_one_ulp_in_a_weight_or_a_metric_is_a_difference_and_timings_are_not(tmp_path):
    w = torch.tensor([0.1, 0.2, 0.3])
    row = {"step": 1, "loss/value": 0.25, "speed/step_seconds": 1.5, "memory/peak_gb": 0.1}
    base = fp.fingerprint(fake_run(tmp_path / "base", w, [row]))
    assert list(base["weights"]) == ["a.bias", "b.weight"] and base["metrics"] == [{"step": 1, "loss/value": 0.25}]

    w_ulp = w.clone()
    w_ulp[1] = torch.nextafter(w[1], torch.tensor(1.0))  # one ulp
    diff = fp.differences(base, fp.fingerprint(fake_run(tmp_path / "w", w_ulp, [row])))
    assert len(diff) == 1 and diff[0].startswith("weight b.weight")

    row_ulp = {**row, "loss/value": float(np.nextafter(0.25, 1.0))}
    diff = fp.differences(base, fp.fingerprint(fake_run(tmp_path / "m", w, [row_ulp])))
    assert len(diff) == 1 and diff[0].startswith("metrics row 1 loss/value")

    other_machine = {**row, "speed/step_seconds": 9.0, "memory/peak_gb": 3.0}
    assert fp.differences(base, fp.fingerprint(fake_run(tmp_path / "t", w, [other_machine]))) == []
    diff = fp.differences(base, fp.fingerprint(fake_run(tmp_path / "r", w, [row, row])))
    assert diff == ["metrics: 1 rows -> 2"]


def test_another_query_trained_on_is_a_difference(tmp_path):
    w, row = torch.tensor([0.1]), {"step": 1}
    line = {"step": 1, "trained": ["q1", "q2"], "dropped_tied": [], "skipped_by_filter": []}
    base = fp.fingerprint(fake_run(tmp_path / "base", w, [row], [line]))
    assert fp.differences(base, fp.fingerprint(fake_run(tmp_path / "same", w, [row], [line]))) == []
    other = {**line, "trained": ["q1", "q3"]}
    diff = fp.differences(base, fp.fingerprint(fake_run(tmp_path / "other", w, [row], [other])))
    assert len(diff) == 1 and diff[0].startswith("queries.jsonl line 1")


def _baseline() -> str:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: no baseline commit to compare with")
    baseline = fp.default_baseline()
    if subprocess.run(["git", "cat-file", "-e", f"{baseline}^{{commit}}"], cwd=REPO, capture_output=True).returncode:
        pytest.skip(f"baseline {baseline} is not in this clone")
    return baseline


@pytest.mark.slow
def test_tiny_cpu_run_is_bitwise_the_baselines(tmp_path):
    base, new = fp.compare_with(_baseline(), tmp_path)
    assert len(new["weights"]) > 10 and [r["step"] for r in new["metrics"]] == [1, 2, 3]
    assert new["metrics"][-1]["format/rate"] is not None  # the CoT stage ran (the schedule's switch)
    assert fp.differences(base, new) == []


@pytest.mark.slow
def test_curation_branches_are_bitwise_the_baselines(tmp_path):
    """Tied groups dropped and refilled, solved queries passed over, the budget ending the run."""
    base, new = fp.compare_with(_baseline(), tmp_path, variant="curation")
    rows = new["metrics"]
    assert len(rows) in range(2, 6), "the generation budget ends the run before its 6 scheduled steps"
    assert all(r["dynamic/dropped_groups"] > 0 for r in rows)
    assert sum(r["data/skipped_by_filter"] for r in rows) > 0
    assert fp.differences(base, new) == []
