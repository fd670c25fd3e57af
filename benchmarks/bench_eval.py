"""Evaluation throughput on the tiny model: one query per generate call vs batches, side by side.

Runs `tempsamp.evaluation.inference.run_generations` (frame sampling, prompt building, greedy
generation, the per-answer log-prob, the resumable JSONL) on the same synthetic queries and the
same loaded model at each batch size, answer mode, and prints queries/s and the ratio to batch 1.
It also checks that every batch size stored the same answers (greedy answers must not depend on
batching).

    python benchmarks/bench_eval.py [--queries 16] [--batch-sizes 1 4 8] [--new-tokens 16] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def write_video(path: Path, seconds: float, fps: int = 4, size: int = 56) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(int(seconds * fps)):
            frame = np.full((size, size, 3), (i * 7) % 256, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        container.mux(stream.encode())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=16)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads (1: the tiny model's small ops are fastest so on the shared 2-core machine)")
    args = parser.parse_args()

    import torch

    from tempsamp.data.example import Example
    from tempsamp.evaluation.inference import TransformersGenerator, VideoSettings, run_generations
    from tempsamp.models import qwen_vl
    from tempsamp.models.tiny import ensure_tiny_model

    torch.set_num_threads(args.threads)
    model, processor = qwen_vl.load_policy(str(ensure_tiny_model()))
    model.eval()
    generator = TransformersGenerator(model, processor, max_new_tokens=args.new_tokens)
    video = VideoSettings(min_pixels=56 * 56, max_pixels=56 * 56, total_pixels=56 * 56 * 64)
    words = "when does the person open the door and walk out of the room".split()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        examples = []
        for i in range(args.queries):  # varied lengths: batches need padding, as real ones do
            seconds = 6.0 + 2 * (i % 5)
            write_video(tmp / f"v{i}.mp4", seconds)
            examples.append(Example(qid=str(i), video_id=f"v{i}", video_path=str(tmp / f"v{i}.mp4"), duration=seconds,
                                    query=" ".join(words[: 3 + i % 9]), spans=((1.0, 3.0),)))
        (tmp / "warmup").mkdir()  # first calls pay one-off costs (kernels, caches): not part of any row
        run_generations(generator, examples[:2], tmp / "warmup", ["answer"], video, 2, progress=False)
        rows, answers = [], {}
        for batch_size in args.batch_sizes:
            out = tmp / f"b{batch_size}"
            out.mkdir()
            t0 = time.perf_counter()
            records = run_generations(generator, examples, out, ["answer"], video, batch_size, progress=False)
            seconds = time.perf_counter() - t0
            answers[batch_size] = [json.dumps(r["answer"], sort_keys=True) for r in records]
            rows.append((batch_size, seconds, args.queries / seconds))
    base = rows[0][2]
    print(f"eval throughput, tiny Qwen2.5-VL (real vocab), {args.queries} queries, answer mode, greedy, "
          f"max {args.new_tokens} new tokens, {torch.get_num_threads()} threads")
    print(f"{'batch':>6} {'seconds':>8} {'queries/s':>10} {'vs batch ' + str(rows[0][0]):>11}")
    for batch_size, seconds, qps in rows:
        print(f"{batch_size:>6} {seconds:>8.2f} {qps:>10.2f} {qps / base:>10.2f}x")
    same = all(answers[b] == answers[rows[0][0]] for b in answers)
    print(f"same stored answers at every batch size: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
