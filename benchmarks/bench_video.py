"""Frame sampling cost, measured side by side in one run on a 60-s 480p 30-fps mp4 written to a temp dir:

  * 2-FPS sampling (tempsamp.video.sample_frames: packet index + keyframe seeks, only the sampled
    frames converted) vs decoding every frame, for two keyframe intervals (1 s and x264's default 250);
  * a cached read vs an uncached one (tempsamp.video.cache).

    python benchmarks/bench_video.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from tempsamp.video import sample_frames
from tempsamp.video.sampling import _open, clip_frame_size, decode_all_frames

SECONDS, FPS, W, H = 60, 30, 854, 480
BUDGET = dict(min_pixels=16 * 28 * 28, max_pixels=256 * 28 * 28, total_pixels=3584 * 28 * 28)  # the recipes' defaults


def write_test_video(path: Path, gop: int) -> Path:
    """Drifting gradients and moving bars: cheap to make (slices of precomputed planes), not trivial to decode."""
    y, x = np.mgrid[0:H + 256, 0:W + 256]
    red, green, blue = (x % 256).astype(np.uint8), (y % 256).astype(np.uint8), (((x // 40) % 2) * 200).astype(np.uint8)
    img = np.empty((H, W, 3), np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS, options={"preset": "ultrafast", "crf": "23", "g": str(gop)})
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for j in range(SECONDS * FPS):
            img[..., 0] = red[:H, (4 * j) % 256:(4 * j) % 256 + W]
            img[..., 1] = green[(2 * j) % 256:(2 * j) % 256 + H, :W]
            img[..., 2] = blue[:H, (40 * (j // 10)) % 80:(40 * (j // 10)) % 80 + W]
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = j
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def decode_all_and_convert(path: Path) -> int:
    """The naive sampler: decode and convert every frame, keep every 15th."""
    with _open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        h, w = clip_frame_size(H, W, SECONDS * 2, **BUDGET)
        reformatter = VideoReformatter()  # shared, as sample_frames does: only the work differs
        kept = [reformatter.reformat(f, width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray()
                for f in container.decode(stream)][::FPS // 2]
    return len(kept)


def best_of(fn, repeats=2):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main():
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        videos = {gop: write_test_video(tmp / f"gop{gop}.mp4", gop) for gop in (30, 250)}
        print(f"wrote two {SECONDS}-s {W}x{H} {FPS}-fps mp4s in {time.perf_counter() - t:.1f} s "
              f"({', '.join(f'GOP {g}: {p.stat().st_size / 1e6:.1f} MB' for g, p in videos.items())})")
        for gop, path in videos.items():
            t_all, n = best_of(lambda: decode_all_frames(str(path)))
            t_naive, _ = best_of(lambda: decode_all_and_convert(path))
            t_2fps, video = best_of(lambda: sample_frames(path, fps=2.0, **BUDGET))
            print(f"GOP {gop:3d}: decode every frame ({n}) {t_all:6.2f} s | decode+convert every frame {t_naive:6.2f} s | "
                  f"sample 2 FPS ({len(video)} frames {video.frames.shape[1]}x{video.frames.shape[2]}) {t_2fps:6.2f} s | "
                  f"ratio every-frame / 2-FPS = {t_all / t_2fps:.1f}x (vs decode+convert {t_naive / t_2fps:.1f}x)")

        path = videos[30]
        uncached, cached = [], []
        for i in range(3):  # a fresh cache folder each round: the first call misses, the second hits
            cache_dir = tmp / f"cache{i}"
            t = time.perf_counter()
            miss = sample_frames(path, fps=2.0, cache_dir=cache_dir, **BUDGET)
            uncached.append(time.perf_counter() - t)
            t = time.perf_counter()
            hit = sample_frames(path, fps=2.0, cache_dir=cache_dir, **BUDGET)
            cached.append(time.perf_counter() - t)
            assert np.array_equal(miss.frames, hit.frames)
        print(f"cache ({miss.frames.nbytes / 1e6:.1f} MB of frames): uncached (decode + write) {min(uncached) * 1e3:7.1f} ms | "
              f"cached read {min(cached) * 1e3:6.1f} ms | ratio {min(uncached) / min(cached):.0f}x")


if __name__ == "__main__":
    main()
