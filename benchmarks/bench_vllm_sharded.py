"""vLLM rollouts under FSDP2 with 2 processes against transformers rollouts, side by side in one run.

    .venv-vllm/bin/python benchmarks/bench_vllm_sharded.py [--steps 4] [--new-tokens 24] [--group 8]

Run it with the .venv-vllm python (`make test-vllm` builds it); in a venv without vLLM it says so
and exits 0. Two parts, each with 2 gloo processes (torchrun) on the tiny vLLM-compatible model
(``tiny-vllm``: real vocabulary, float32):
1. ``tempsamp train tiny_cpu distributed=fsdp --num-processes 2`` with rollout_engine=transformers,
   then with rollout_engine=vllm (each process its own engine), the same synthetic data and
   settings; the medians per step of speed.json (step, rollout, push), the first step excluded
   by the median only as one of ``--steps`` values.
2. The weight push alone under FSDP2 (this script as a torchrun worker): its time, and its peak
   extra memory per process two ways: the largest set of gathered tensors alive at once (the
   module being pushed: exact), and the process's peak RSS during the push above its RSS before
   (sampled every millisecond: includes allocator noise).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a source checkout


def env() -> dict:
    e = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", VLLM_CPU_KVCACHE_SPACE="1",
             VLLM_ENABLE_V1_MULTIPROCESSING="0")
    for key in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(key, None)
    return e


def train(root: Path, engine: str, args) -> tuple[dict, float]:
    out = root / engine
    command = [sys.executable, "-m", "tempsamp", "train", "tiny_cpu", "model=tiny-vllm", f"rollout_engine={engine}",
               "distributed=fsdp", f"train_annotations={root / 'synth' / 'train.jsonl'}", f"output_dir={out}",
               f"num_generations={args.group}", f"max_new_tokens={args.new_tokens}", "queries_per_step=4",
               "frame_cache=null", f"save_every={args.steps}", f'stages=[{{"mode": "answer", "steps": {args.steps}}}]',
               "--num-processes", "2"]
    start = time.perf_counter()
    done = subprocess.run(command, env=env(), capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{engine}: exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return json.loads((out / "speed.json").read_text()), time.perf_counter() - start


def worker(out: str) -> None:
    """One torchrun process: an FSDP2-sharded policy, its own vLLM engine, three timed pushes."""
    import psutil
    import torch

    from tempsamp.models import qwen_vl
    from tempsamp.train.loop import resolve_model_path
    from tempsamp.train.parallel import Parallel
    from tempsamp.train.rollout_engine import VLLMEngine

    torch.set_num_threads(1)
    parallel = Parallel("fsdp")
    path = resolve_model_path("tiny-vllm")
    model, processor = qwen_vl.load_policy(path, dtype=torch.float32, device="cpu")
    whole_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    parallel.prepare(model, lambda ps: torch.optim.AdamW(ps, lr=0.0), max_grad_norm=1.0)
    engine = VLLMEngine(path, processor, model_type="qwen2_5_vl", max_new_tokens=8, temperature=1.0, top_p=1.0,
                        dtype="float32", max_model_len=2048)
    me = psutil.Process()
    results = []
    for _ in range(3):
        largest = {"bytes": 0}

        def counted(weights):  # the tensors one module yields are alive together, until the next module
            module, alive = None, 0
            for name, tensor in weights:
                owner = name.rsplit(".", 1)[0]
                alive = alive + tensor.numel() * tensor.element_size() if owner == module else tensor.numel() * tensor.element_size()
                module = owner
                largest["bytes"] = max(largest["bytes"], alive)
                yield name, tensor

        peak, stop = {"rss": 0}, threading.Event()

        def sample():
            while not stop.is_set():
                peak["rss"] = max(peak["rss"], me.memory_info().rss)
                time.sleep(0.001)

        parallel.barrier()
        before = me.memory_info().rss
        thread = threading.Thread(target=sample)
        thread.start()
        start = time.perf_counter()
        engine.push_weights(parallel.policy, weights=counted(parallel.full_weights()))
        seconds = time.perf_counter() - start
        stop.set()
        thread.join()
        results.append({"seconds": seconds, "gathered_peak_bytes": largest["bytes"],
                        "rss_extra_bytes": max(0, peak["rss"] - before), "whole_model_bytes": whole_bytes})
    everyone = parallel.gather_object(results)
    if parallel.is_main:
        Path(out).write_text(json.dumps(everyone))
    parallel.barrier()
    engine.close()  # destroys every process group, the trainer's too
    parallel.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return 0
    try:
        import vllm
    except ImportError:
        print("bench_vllm_sharded: vLLM is not installed in this venv; run it with .venv-vllm/bin/python. Skipped.")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        subprocess.run([sys.executable, "-m", "tempsamp", "data", "synth", "--out", str(root / "synth"), "--n", "16",
                        "--seed", "0"], env=env(), check=True, capture_output=True)
        speeds = {}
        for engine in ("transformers", "vllm"):
            speeds[engine] = train(root, engine, args)
        pushes = root / "push.json"
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", __file__, "--worker",
                        str(pushes)], env=env(), check=True, capture_output=True)
        push = json.loads(pushes.read_text())
    print(f"fsdp, 2 gloo processes, tiny-vllm (float32, real vocabulary), 4 queries x G={args.group}, "
          f"<= {args.new_tokens} new tokens, {args.steps} steps; vllm {vllm.__version__}")
    for engine, (speed, launch) in speeds.items():
        print(f"{engine:13s} step {speed['step_seconds']:6.2f} s  rollout {speed['rollout_seconds']:6.2f} s  "
              f"push {speed['push_seconds']:5.3f} s  (whole launch {launch:5.1f} s)")
    t, v = speeds["transformers"][0], speeds["vllm"][0]
    print(f"step transformers/vllm = {t['step_seconds'] / v['step_seconds']:.2f}x, "
          f"rollout {t['rollout_seconds'] / v['rollout_seconds']:.2f}x")
    for rank, runs in enumerate(push):
        whole = runs[0]["whole_model_bytes"]
        print(f"push, process {rank}: {statistics.median(r['seconds'] for r in runs):.3f} s (median of {len(runs)}); "
              f"gathered at once <= {max(r['gathered_peak_bytes'] for r in runs) / 2**20:.2f} MiB "
              f"(whole model {whole / 2**20:.1f} MiB); peak RSS above the start {max(r['rss_extra_bytes'] for r in runs) / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
