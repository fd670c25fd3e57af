"""`tempsamp demo --quick` alone, then beside one CPU-bound competitor: the slowdown as a ratio, in one run.

A shared machine is the normal case for a CPU demo: the question is whether our run slows down in
proportion to the CPU it loses (one competitor on 2 cores: about 2x at worst) or far more (threads
that wait for each other while one of them is descheduled). Both runs start from the same warm state:
the synthetic data, the start model and the frame cache are made first, untimed, and shared (each
run gets its own runs and eval folders, so nothing trained is reused). The threads each run used are
read from its runs' layout.json.

    python benchmarks/bench_contention.py               # the demo's defaults (1 thread)
    python benchmarks/bench_contention.py --threads 0   # torch's default: one thread per core

Other load on the machine adds noise to both runs: read the load average printed beside the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def warm(work: Path) -> None:
    """The demo's data, start model and every video's frames in the cache, as the demo makes them."""
    from tempsamp.data.readers import load_examples
    from tempsamp.data.synth import synthesize
    from tempsamp.demo import FRAME_PIXELS, QUICK, SYNTH_KNOBS
    from tempsamp.evaluation.inference import VideoSettings

    data = Path(synthesize(work / "synth", n=QUICK.n_videos, seed=0, **SYNTH_KNOBS))
    video = VideoSettings(min_pixels=FRAME_PIXELS, max_pixels=FRAME_PIXELS, total_pixels=FRAME_PIXELS * 128,
                          frame_cache=str(work / "frames"))
    for split in ("train", "test"):
        for ex in load_examples(data / f"{split}.jsonl", "jsonl"):
            video.load(ex.video_path)


def run_demo(shared: Path, folder: Path, env: dict, extra: list[str]) -> tuple[float, list]:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name in ("synth", "frames", "start-model"):
        if (shared / name).exists():
            (folder / name).symlink_to((shared / name).resolve())
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "tempsamp", "demo", "--quick", "--out", str(folder / "out"),
                           "--work-dir", str(folder), *extra], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"demo failed: {done.stderr[-3000:]}")
    threads = sorted({entry.get("threads") for p in folder.glob("runs-quick/*/layout.json")
                      for entry in json.loads(p.read_text())}, key=str)
    return seconds, threads


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", default=".cache/bench-contention")
    parser.add_argument("--threads", type=int, default=None,
                        help="tempsamp demo --threads N (0: one per core, torch's default; default: the demo's own, 1)")
    parser.add_argument("--wait-policy", choices=["active", "passive"], default=None,
                        help="OMP_WAIT_POLICY for the demo (default: the project's choice)")
    args = parser.parse_args(argv)

    shared = Path(args.work_dir)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for key in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY"):
        env.pop(key, None)
    extra = [] if args.threads is None else ["--threads", str(args.threads)]
    if args.wait_policy is not None:
        env["OMP_WAIT_POLICY"] = args.wait_policy.upper()
    t0 = time.perf_counter()
    warm(shared)
    print(f"warm-up (data, frames): {time.perf_counter() - t0:.0f} s; cores available: {len(os.sched_getaffinity(0))}",
          flush=True)

    results = {}
    for label in ("alone", "beside one competitor"):
        competitor = None
        if label != "alone":  # one CPU-bound process (one thread, never sleeps)
            competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        load = os.getloadavg()[0]
        try:
            seconds, threads = run_demo(shared, shared / f"run-{label.split()[0]}", env, extra)
        finally:
            if competitor is not None:
                competitor.kill()
                competitor.wait()
        results[label] = seconds
        print(f"{label:24s} {seconds:7.1f} s   threads per run {threads}   load average at start {load:.1f}", flush=True)
    ratio = results["beside one competitor"] / results["alone"]
    threads_setting = "the demo's default" if args.threads is None else args.threads
    print(f"slowdown beside one competitor: {ratio:.2f}x (settings: --threads {threads_setting}, "
          f"wait policy={args.wait_policy or 'project default'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
