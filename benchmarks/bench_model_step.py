"""Cost of one group on the tiny Qwen2.5-VL: sampling, and scoring with gradients.

    python benchmarks/bench_model_step.py [--group 4] [--seconds 20] [--fps 2] [--size 56]
                                          [--new-tokens 32] [--repeats 3] [--threads 1]

One group = G completions of one prompt holding a `seconds`-long video at `fps` (frames of
size x size pixels). For each vocabulary (real Qwen2.5, 151,936 rows; small, 1,088 rows) and each
way of getting the log-probs it reports, from one run:
- generate: median wall time of sampling G completions (max `new-tokens` each);
- logprobs fwd+bwd: median wall time of completion_logprobs (forward with the video) + backward;
- peak RSS of the process.
"keep" is the adapter's path (logits_to_keep = completion length + 1); "full" asks the model for
logits at every position and slices afterwards, to show what logits_to_keep saves. Each variant
runs in its own process so that peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout


def worker(args) -> dict:
    import numpy as np
    import torch

    from tempsamp.models import qwen_vl
    from tempsamp.models.tiny import TinySpec, ensure_tiny_model

    torch.set_num_threads(args.threads)
    model, processor = qwen_vl.load_policy(str(ensure_tiny_model(spec=TinySpec(vocab=args.vocab))))
    num_frames = int(round(args.seconds * args.fps))
    frames = np.random.default_rng(0).integers(0, 256, (num_frames, args.size, args.size, 3), dtype=np.uint8)
    prompt = qwen_vl.build_prompt(processor, "When does the person open the door?", frames, args.fps)

    def sample():
        return qwen_vl.generate(model, processor, prompt, num_samples=args.group, max_new_tokens=args.new_tokens)

    torch.manual_seed(0)
    sample()  # warm-up
    generate_times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        completions = sample()
        generate_times.append(time.perf_counter() - start)

    batch = qwen_vl.group_batch(prompt, completions.ids, qwen_vl.pad_token_id(processor))
    length = batch["completion_mask"].shape[1]
    model.train()

    def score():
        if args.mode == "keep":
            logprobs = qwen_vl.completion_logprobs(model, batch)
        else:  # every position's logits, sliced afterwards
            logits = model(**qwen_vl.model_inputs(model, batch), use_cache=False).logits
            logits = logits[:, -length - 1 : -1]
            logprobs, _ = qwen_vl.token_logprobs(logits, batch["input_ids"][:, -length:])
        loss = -(logprobs * batch["completion_mask"]).sum() / batch["completion_mask"].sum()
        loss.backward()
        model.zero_grad(set_to_none=True)

    score()  # warm-up
    score_times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        score()
        score_times.append(time.perf_counter() - start)

    return {
        "generate_s": statistics.median(generate_times),
        "score_s": statistics.median(score_times),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "prompt_tokens": int(prompt["input_ids"].shape[1]),
        "video_tokens": int((prompt["mm_token_type_ids"] == 2).sum()),
        "completion_tokens": int(batch["completion_mask"].sum()),
        "threads": torch.get_num_threads(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--fps", type=float, default=2.0)
    parser.add_argument("--size", type=int, default=56)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads per worker (1: the tiny model's small ops are fastest so on a shared 2-core machine)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--vocab", default="real", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="keep", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    from tempsamp.models.tiny import TinySpec, ensure_tiny_model

    for vocab in ("real", "small"):
        ensure_tiny_model(spec=TinySpec(vocab=vocab))  # build outside the timed workers
    shared = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("worker", "vocab", "mode")]
    results = {}
    for vocab in ("real", "small"):
        for mode in ("keep", "full"):
            command = [sys.executable, __file__, "--worker", f"--vocab={vocab}", f"--mode={mode}", *shared]
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
            output = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
            results[vocab, mode] = json.loads(output.strip().splitlines()[-1])

    first = results["real", "keep"]
    print(
        f"G={args.group}, {args.seconds:g} s video at {args.fps:g} fps, {args.size}x{args.size} frames "
        f"({first['video_tokens']} video tokens, prompt {first['prompt_tokens']} tokens), "
        f"max {args.new_tokens} new tokens, {first['threads']} threads, median of {args.repeats}"
    )
    header = ["vocab ", "logits", "generate s", "logprobs fwd+bwd s", "peak RSS GB", "completion tokens"]
    print(f"{header[0]:<6} {header[1]:<5} {header[2]:>11} {header[3]:>19} {header[4]:>12} {header[5]:>18}")
    for (vocab, mode), r in results.items():
        print(
            f"{vocab:<6} {mode:<5} {r['generate_s']:>11.3f} {r['score_s']:>19.3f} "
            f"{r['peak_rss_gb']:>12.2f} {r['completion_tokens']:>18}"
        )
    for vocab in ("real", "small"):
        keep, full = results[vocab, "keep"], results[vocab, "full"]
        print(
            f"{vocab}: full logits / logits_to_keep: fwd+bwd time x{full['score_s'] / keep['score_s']:.2f}, "
            f"peak RSS x{full['peak_rss_gb'] / keep['peak_rss_gb']:.2f}"
        )
    real, small = results["real", "keep"], results["small", "keep"]
    print(
        f"real / small vocabulary (logits_to_keep): generate x{real['generate_s'] / small['generate_s']:.2f}, "
        f"fwd+bwd x{real['score_s'] / small['score_s']:.2f}, peak RSS x{real['peak_rss_gb'] / small['peak_rss_gb']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
