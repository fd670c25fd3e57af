"""Is the training loop's behaviour unchanged? A `tiny_cpu` run's fingerprint, here and at a git commit.

    python scripts/loop_fingerprint.py                      # this working tree against the baseline (below)
    python scripts/loop_fingerprint.py --baseline COMMIT    # ... against any commit
    python scripts/loop_fingerprint.py --processes 2        # a 2-process FSDP run instead of 1 process
    python scripts/loop_fingerprint.py --variant curation   # with dynamic sampling, the online filter, a budget
    python scripts/loop_fingerprint.py --run-only OUT.json  # just this tree's fingerprint, written to OUT.json

The fingerprint of a run is the sha256 of every final weight tensor (final-model/*.safetensors, in
name order), metrics.jsonl without the keys that measure the machine (speed/*, memory/*, */seconds)
and queries.jsonl (the queries trained on, dropped as tied, passed over, per step).
Two runs from the same inputs with the same seed must agree bit for bit: any change to a weight bit
or a logged value is reported, and the script exits 1.

The baseline is run from a `git worktree` of the commit (removed afterwards), with this script and
the same Python, on inputs built once here (the tiny model with the small vocabulary, a few synthetic
videos), so the comparison needs no stored fingerprint that would go stale with every intended change
of behaviour, and compares only the loop: the model and the data are the same files for both runs.
Default baseline: $TEMPSAMP_FINGERPRINT_BASE, else the merge-base of HEAD with `main` (on a branch:
the commit it started from; on main itself: HEAD, i.e. the working tree against the last commit).
Both runs use one intra-op thread (OMP_NUM_THREADS=1), which is what makes them bitwise repeatable.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# the machine's figures, not the run's: they differ between two identical runs
MACHINE_KEYS = ("speed/", "memory/", "time/")
# G = 4, 8 new tokens, 2 queries per step; 2 answer steps then 1 CoT step (the hybrid schedule's switch)
RUN_OVERRIDES = {
    "dataset": "jsonl", "num_generations": 4, "max_new_tokens": 8, "queries_per_step": 2, "learning_rate": 1e-3,
    "min_pixels": 3136, "max_pixels": 3136, "total_pixels": 3136 * 16, "save_every": 100, "frame_cache": None,
    "stages": [{"mode": "answer", "steps": 2}, {"mode": "cot", "steps": 1}], "seed": 0, "preflight_videos": 0,
}
# what each variant adds: "curation" drives the data-side branches (tied groups dropped and refilled,
# the online filter passing over solved queries, the generation budget ending the run) with 3 queries
# per step, which two processes share unevenly
VARIANTS = {
    "plain": {},
    "curation": {"queries_per_step": 3, "dynamic_sampling": True, "dynamic_sampling_max_rounds": 2, "online_filter_k": 1,
                 "online_filter_iou": 0.0, "max_generated_tokens": 450,
                 "stages": [{"mode": "answer", "steps": 4}, {"mode": "cot", "steps": 2}]},
}


def is_machine_key(key: str) -> bool:
    return key.startswith(MACHINE_KEYS) or key.endswith("seconds")


def fingerprint(run_dir: Path) -> dict:
    """sha256 per final weight tensor (name order) and the metrics rows without the machine's keys."""
    import torch
    from safetensors import safe_open

    weights = {}
    for path in sorted((run_dir / "final-model").glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in sorted(f.keys()):
                tensor = f.get_tensor(name).contiguous()
                digest = hashlib.sha256(tensor.view(-1).view(torch.uint8).numpy().tobytes())
                weights[name] = f"{tensor.dtype}{list(tensor.shape)}:{digest.hexdigest()}"
    if not weights:
        raise SystemExit(f"{run_dir}/final-model: no safetensors weights")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    metrics = [{k: v for k, v in row.items() if not is_machine_key(k)} for row in rows]
    queries = run_dir / "queries.jsonl"
    return {"weights": weights, "metrics": metrics,
            "queries": queries.read_text().splitlines() if queries.is_file() else []}


def differences(base: dict, new: dict, limit: int = 20) -> list[str]:
    """What differs between two fingerprints, one line each (empty: identical)."""
    out = []
    for name in sorted(set(base["weights"]) | set(new["weights"])):
        if base["weights"].get(name) != new["weights"].get(name):
            out.append(f"weight {name}: {base['weights'].get(name)} -> {new['weights'].get(name)}")
    if len(base["metrics"]) != len(new["metrics"]):
        out.append(f"metrics: {len(base['metrics'])} rows -> {len(new['metrics'])}")
    for i, (a, b) in enumerate(zip(base["metrics"], new["metrics"])):
        for key in sorted(set(a) | set(b)):
            if key not in b or key not in a or json.dumps(a[key]) != json.dumps(b[key]):
                out.append(f"metrics row {i + 1} {key}: {a.get(key, '(absent)')!r} -> {b.get(key, '(absent)')!r}")
    base_queries, new_queries = base.get("queries", []), new.get("queries", [])
    for i in range(max(len(base_queries), len(new_queries))):
        a = base_queries[i] if i < len(base_queries) else "(absent)"
        b = new_queries[i] if i < len(new_queries) else "(absent)"
        if a != b:
            out.append(f"queries.jsonl line {i + 1}: {a} -> {b}")
    return out[:limit] + ([f"... and {len(out) - limit} more"] if len(out) > limit else [])


def prepare_inputs(work: Path) -> tuple[Path, Path]:
    """The tiny model (small vocabulary) and 4 synthetic 6-s videos, built once with this tree's code."""
    from tempsamp.models.tiny import TinySpec, ensure_tiny_model

    model = ensure_tiny_model(spec=TinySpec(vocab="small"))
    data = work / "data"
    if not (data / "train.jsonl").is_file():
        subprocess.run([sys.executable, "-m", "tempsamp", "data", "synth", "--out", str(data), "--n", "4",
                        "--seed", "0", "--duration", "6", "--queries-per-video", "1", "--size", "56"],
                       check=True, env=_env(REPO), stdout=subprocess.DEVNULL)
    return Path(model), data


def _env(code: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(code), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.pop("LOCAL_RANK", None)
    return env


def run(code: Path, model: Path, data: Path, out: Path, processes: int = 1, variant: str = "plain") -> dict:
    """`tempsamp train tiny_cpu` with the code under ``code``; returns the run's fingerprint."""
    values = {**RUN_OVERRIDES, **VARIANTS[variant], "model": str(model), "train_annotations": str(data / "train.jsonl"), "output_dir": str(out)}
    if processes > 1:
        values.update(distributed="fsdp")
    overrides = [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in values.items()]
    shutil.rmtree(out, ignore_errors=True)  # a fresh run, never a continuation of an old one
    cmd = [sys.executable, "-m", "tempsamp", "train", "tiny_cpu", *overrides]
    if processes > 1:
        cmd += ["--num-processes", str(processes)]
    done = subprocess.run(cmd, env=_env(code), cwd=code, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"training with the code in {code} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return fingerprint(out)


def default_baseline() -> str:
    if env := os.environ.get("TEMPSAMP_FINGERPRINT_BASE"):
        return env
    found = subprocess.run(["git", "merge-base", "HEAD", "main"], cwd=REPO, capture_output=True, text=True)
    return found.stdout.strip() if found.returncode == 0 else "HEAD"


def compare_with(baseline: str, work: Path, processes: int = 1, variant: str = "plain") -> tuple[dict, dict]:
    """Fingerprints of the baseline commit and of this tree, from the same inputs."""
    model, data = prepare_inputs(work)
    checkout = work / "baseline"
    subprocess.run(["git", "worktree", "add", "--detach", "--force", str(checkout), baseline], cwd=REPO, check=True,
                   capture_output=True)
    try:
        base = run(checkout, model, data, work / "run-baseline", processes, variant)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(checkout)], cwd=REPO, capture_output=True)
    return base, run(REPO, model, data, work / "run-current", processes, variant)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", default=None, help="git commit to compare with (default: see the module doc)")
    p.add_argument("--processes", type=int, default=1, help="1 (default) or 2 (an FSDP run)")
    p.add_argument("--variant", choices=sorted(VARIANTS), default="plain", help="which run (see VARIANTS)")
    p.add_argument("--run-only", metavar="OUT_JSON", default=None, help="write this tree's fingerprint and stop")
    p.add_argument("--work", default=None, help="folder for the inputs and runs (default: a temporary one, removed)")
    args = p.parse_args(argv)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="loop-fingerprint-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.run_only:
            model, data = prepare_inputs(work)
            Path(args.run_only).write_text(json.dumps(run(REPO, model, data, work / "run-current", args.processes, args.variant), indent=1))
            return 0
        baseline = args.baseline or default_baseline()
        base, new = compare_with(baseline, work, args.processes, args.variant)
        diff = differences(base, new)
        for line in diff:
            print(line)
        what = (f"{len(new['weights'])} weight tensors, {len(new['metrics'])} metrics rows, {len(new['queries'])} query-log "
                f"lines ({args.processes} process(es), variant {args.variant})")
        print(f"{'DIFFERENT' if diff else 'identical'} to {baseline}: {what}")
        return 1 if diff else 0
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
