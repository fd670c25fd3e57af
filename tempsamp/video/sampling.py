"""Decode a video at a target frame rate under a frame cap and a Qwen-VL pixel budget.

What is sampled (the contract with the model adapter, which shows frame i at i / fps):
  * Times t_k = k / fps for k = 0, 1, ... while t_k < duration, counted from the first video frame.
  * The frame returned for t_k is the frame on screen at t_k: the last frame whose presentation
    time is <= t_k (+0.1 ms for float noise). Its presentation time is reported in ``timestamps``,
    so ``timestamps[k]`` <= k / fps, within one source frame interval (exact when the source frame
    grid contains k / fps, e.g. 2 FPS from 30 FPS).
  * Frame cap: when 2 FPS would give more than ``max_frames`` frames, the rate is lowered to
    ``max_frames / duration`` and ``Video.fps`` reports that effective rate (frames stay uniform in
    time, so i / fps is still the frame's time); ``Video.capped`` says it happened.
  * Duration: measured from the container's packet index (last frame's time + its duration),
    never read from header metadata, which is missing or wrong in some files.

Pixel budget, in Qwen-VL terms (one size for every frame of a clip):
  * ``smart_resize`` as in qwen-vl-utils: each side rounded to a multiple of 28, aspect kept, area
    scaled into [min_pixels, max_pixels]. When both cannot hold (e.g. min == max with an aspect
    ratio that no pair of 28-multiples has), max_pixels wins: it is the cost bound.
  * Clip budget: the per-frame maximum becomes min(max_pixels, max(min_pixels, total_pixels / T))
    for T frames. Unlike qwen-vl-utils, which counts total_pixels per 2-frame grid slice,
    ``total_pixels`` here bounds the pixels of all T frames (T * h * w <= total_pixels) unless
    that would push frames below min_pixels.

``frame_sampling="qwen"`` instead reproduces qwen-vl-utils 0.0.14 (what Qwen2.5-VL is usually served
with) exactly in frame count, frame indices and frame size (``qwen_nframes``, ``qwen_frame_indices``,
``qwen_frame_size``): n = floor_even(total_frames / video_fps * fps) clamped to [4, max_frames] and to
the frame count, frames ``linspace(0, total_frames - 1, n).round()``, reported rate
n / total_frames * video_fps, and the per-frame budget total_pixels / n * 2 (per 2-frame slice).
docs/evaluation.md tabulates every difference from the default and why the default differs.

How it decodes (PyAV): one demux pass reads the packet index (presentation times, keyframes;
no decoding). Each wanted frame then either decodes forward from where the decoder is, or, when a
keyframe lies between the decoder's position and the wanted frame, seeks to that keyframe first.
So sparse targets (interval longer than the GOP) skip whole GOPs, and dense targets decode
sequentially. Only the wanted frames are converted to RGB and resized (swscale, area filter).
decord is an optional backend (``backend="decord"``, or ``"auto"`` when installed, except for MPEG-TS
files, where decord's random access returned wrong frames in our tests).
"""

from __future__ import annotations

import errno
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FACTOR = 28  # Qwen2/2.5-VL: 14-px patches merged 2x2
FRAME_SAMPLINGS = ("exact", "qwen")
# qwen-vl-utils 0.0.14 constants (vision_process.py)
QWEN_FRAME_FACTOR = 2
QWEN_MIN_FRAMES = 4
QWEN_MAX_FRAMES = 768
QWEN_VIDEO_MAX_PIXELS = 768 * 28 * 28  # VIDEO_MAX_TOKEN_NUM * factor ** 2
TIME_EPS = 1e-4  # seconds; float noise in pts * time_base
BACKENDS = ("auto", "pyav", "decord")


class VideoDecodeError(RuntimeError):
    """A video file exists but cannot be decoded (corrupt, truncated, no video stream). Names the file."""


@dataclass
class Video:
    """Frames sampled from one video.

    frames:      uint8 [T, H, W, 3] RGB.
    fps:         the rate the frames represent: frame i is the video at i / fps seconds. The
                 requested fps, or max_frames / duration when the frame cap lowered it.
    timestamps:  float64 [T], presentation time (seconds from the first frame) of each frame returned.
    duration:    source duration in seconds (measured from the packet index).
    source_fps:  the source's average frame rate (frames / duration).
    capped:      True when max_frames lowered the rate below the requested fps.
    backend:     "pyav" or "decord".
    """

    frames: np.ndarray
    fps: float
    timestamps: np.ndarray
    duration: float
    source_fps: float
    capped: bool = False
    backend: str = "pyav"
    path: str = field(default="", compare=False)
    # Each frame's index in the source stream and the stream's average frame rate (what decord's
    # get_avg_fps and PyAV's average_rate report): how qwen-vl-utils times frames (index / rate),
    # which Qwen3-VL writes into the prompt. None in cache entries written before they were kept.
    source_index: np.ndarray | None = field(default=None, compare=False)
    stream_fps: float | None = None

    def source_frames(self) -> tuple[list[int], float] | None:
        """(source indices, stream fps) for the model adapter, or None when unknown."""
        if self.source_index is None or not self.stream_fps:
            return None
        return [int(i) for i in self.source_index], float(self.stream_fps)

    def __len__(self) -> int:
        return len(self.frames)


# ---------------------------------------------------------------- budget and times (pure)


def smart_resize(height: int, width: int, *, min_pixels: int, max_pixels: int, factor: int = FACTOR) -> tuple[int, int]:
    """(h, w), multiples of ``factor``, aspect ratio kept, area in [min_pixels, max_pixels] (max wins).

    Follows qwen-vl-utils' smart_resize: round each side to the factor; if the area is too big,
    scale down and floor; if too small, scale up and ceil.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"smart_resize: frame size must be positive, got {height}x{width}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"smart_resize: aspect ratio of {height}x{width} above 200")
    if min_pixels > max_pixels:
        raise ValueError(f"smart_resize: min_pixels {min_pixels} > max_pixels {max_pixels}")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
        if h * w > max_pixels:  # ceil overshot a max close to min: max wins
            return smart_resize(height, width, min_pixels=0, max_pixels=max_pixels, factor=factor)
    return h, w


def clip_frame_size(height: int, width: int, n_frames: int, *, min_pixels: int, max_pixels: int,
                    total_pixels: int, factor: int = FACTOR) -> tuple[int, int]:
    """The one (h, w) for all n_frames of a clip: per-frame max shrinks to total_pixels / n_frames."""
    frame_max = min(max_pixels, max(min_pixels, total_pixels // max(1, n_frames)))
    h, w = smart_resize(height, width, min_pixels=min_pixels, max_pixels=frame_max, factor=factor)
    if h * w < min_pixels:  # flooring to the clip budget fell under min: the smallest size at or above it
        beta = math.sqrt(min_pixels / (height * width))
        up = (math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor)
        if up[0] * up[1] <= max_pixels:
            h, w = up
    return h, w


def sample_times(duration: float, fps: float, max_frames: int) -> tuple[np.ndarray, float, bool]:
    """Times k / rate in [0, duration), at most max_frames of them; returns (times, rate, capped)."""
    if not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be a positive number, got {fps}")
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    n = max(1, math.ceil(duration * fps - 1e-9))
    rate, capped = float(fps), False
    if n > max_frames:
        n, rate, capped = max_frames, max_frames / duration, True
    return np.arange(n) / rate, rate, capped


# ---------------------------------------------------------------- qwen-vl-utils' rules (pure)


def _floor_even(x: float) -> int:
    return math.floor(x / QWEN_FRAME_FACTOR) * QWEN_FRAME_FACTOR


def qwen_nframes(total_frames: int, video_fps: float, *, fps: float = 2.0, max_frames: int = QWEN_MAX_FRAMES,
                 min_frames: int = QWEN_MIN_FRAMES) -> int:
    """qwen-vl-utils' smart_nframes: floor_even(total_frames / video_fps * fps), clamped to
    [ceil_even(min_frames), floor_even(max_frames)] and to total_frames, then floored to even."""
    if total_frames < 1 or not (video_fps > 0):
        raise ValueError(f"qwen frame sampling needs frames and a frame rate, got {total_frames} frames at {video_fps} fps")
    low = math.ceil(min_frames / QWEN_FRAME_FACTOR) * QWEN_FRAME_FACTOR
    high = _floor_even(max_frames)
    n = _floor_even(min(min(max(total_frames / video_fps * fps, low), high), total_frames))
    if not (QWEN_FRAME_FACTOR <= n <= total_frames):
        raise ValueError(f"qwen frame sampling: {n} frames is outside [{QWEN_FRAME_FACTOR}, {total_frames}] "
                         f"(qwen-vl-utils refuses videos of fewer than 2 frames)")
    return n


def qwen_frame_indices(total_frames: int, n: int) -> np.ndarray:
    """``linspace(0, total_frames - 1, n).round()`` as qwen-vl-utils computes it: torch, float32, half to even."""
    import torch

    return torch.linspace(0, total_frames - 1, n).round().long().numpy()


def qwen_smart_resize(height: int, width: int, *, min_pixels: int, max_pixels: int, factor: int = FACTOR) -> tuple[int, int]:
    """qwen-vl-utils 0.0.14 smart_resize, without the project's guards: the floor branch may go under
    min_pixels and the ceil branch over max_pixels, exactly as there."""
    if max_pixels < min_pixels:
        raise ValueError(f"qwen smart_resize: max_pixels {max_pixels} < min_pixels {min_pixels}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"smart_resize: aspect ratio of {height}x{width} above 200")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    if h < factor or w < factor:
        raise ValueError(f"qwen smart_resize: {height}x{width} shrinks to {h}x{w} under max_pixels {max_pixels}")
    return h, w


def qwen_frame_size(height: int, width: int, n_frames: int, *, min_pixels: int, max_pixels: int,
                    total_pixels: int, factor: int = FACTOR) -> tuple[int, int]:
    """fetch_video's size rule: per-frame max = max(min(768*28*28, total_pixels / n * 2), int(min_pixels * 1.05)),
    then at most the given max_pixels; smart_resize within [min_pixels, that]."""
    video_max = QWEN_VIDEO_MAX_PIXELS // (FACTOR * FACTOR) * factor * factor  # 768 tokens of this factor
    budget = max(min(video_max, total_pixels / n_frames * QWEN_FRAME_FACTOR), int(min_pixels * 1.05))
    return qwen_smart_resize(height, width, min_pixels=min_pixels, max_pixels=min(max_pixels, budget), factor=factor)


def pick_frames(frame_times: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Index (into sorted frame_times) of the frame on screen at each target time."""
    index = np.searchsorted(frame_times, targets + TIME_EPS, side="right") - 1
    return np.clip(index, 0, len(frame_times) - 1)


# ---------------------------------------------------------------- PyAV


@dataclass
class PacketIndex:
    """The video stream's frames from one demux pass (no decoding)."""

    pts: np.ndarray  # int64, sorted presentation timestamps in stream time_base units
    keyframe_pts: np.ndarray  # int64, sorted
    time_base: float
    start_pts: int
    duration: float  # seconds
    uses_pts: bool  # False: the stream has no timestamps, frame k is at k / average_rate

    def times(self, pts) -> np.ndarray:
        return (np.asarray(pts, dtype=np.float64) - self.start_pts) * self.time_base


def _open(path: str):
    import av

    try:
        return av.open(path, metadata_errors="ignore")
    except av.error.FileNotFoundError as err:  # raced with a delete
        raise FileNotFoundError(errno.ENOENT, "video not found", path) from err
    except (av.error.FFmpegError, UnicodeDecodeError, OSError) as err:
        raise VideoDecodeError(f"{path}: cannot open as a video ({err})") from err


def read_packet_index(container, stream, path: str) -> PacketIndex:
    import av

    pts, keys, durations = [], [], []
    try:
        for packet in container.demux(stream):
            if packet.size == 0 or packet.is_discard:  # the flush packet; pre-roll an edit list hides
                continue
            pts.append(packet.pts)
            keys.append(packet.is_keyframe)
            durations.append(packet.duration or 0)
    except av.error.FFmpegError as err:
        raise VideoDecodeError(f"{path}: unreadable packets ({err})") from err
    if not pts:
        raise VideoDecodeError(f"{path}: the video stream holds no frames")
    declared = stream.frames or 0
    if declared and len(pts) < declared:
        raise VideoDecodeError(f"{path}: truncated: {len(pts)} of {declared} frames present")
    uses_pts = all(p is not None for p in pts)
    if uses_pts:
        time_base = float(stream.time_base)
        order = np.argsort(np.asarray(pts, dtype=np.int64), kind="stable")
        pts_arr = np.asarray(pts, dtype=np.int64)[order]
        keyframe_pts = np.sort(np.asarray([p for p, k in zip(pts, keys) if k], dtype=np.int64))
        last = int(np.asarray(durations, dtype=np.int64)[order][-1])
        if last <= 0:  # no packet duration: use the typical frame interval
            last = int(np.median(np.diff(pts_arr))) if len(pts_arr) > 1 else 0
        start = int(pts_arr[0])
        duration = (int(pts_arr[-1]) + last - start) * time_base
    else:  # no timestamps (raw elementary streams): frame k at k / rate
        rate = float(stream.average_rate or stream.guessed_rate or 0)
        if rate <= 0:
            raise VideoDecodeError(f"{path}: no timestamps and no frame rate")
        time_base, start = 1.0 / rate, 0
        pts_arr = np.arange(len(pts), dtype=np.int64)
        keyframe_pts = np.asarray([0], dtype=np.int64)  # no seeking without timestamps
        duration = len(pts) / rate
    if duration <= 0:
        duration = max(len(pts_arr), 1) * 1e-3  # a single frame without duration: a tiny positive length
    return PacketIndex(pts_arr, keyframe_pts if len(keyframe_pts) else pts_arr[:1], time_base, start, duration, uses_pts)


def _to_rgb(frame, size: tuple[int, int], reformatter) -> np.ndarray:
    """RGB at (h, w) through the clip's resizer (``_reformatter``)."""
    h, w = size
    return reformatter.reformat(frame, width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray()


RESIZES = ("area", "bicubic")


class _BicubicResizer:
    """qwen-vl-utils' resize: the frame converted to RGB at its own size, then torchvision's
    ``resize(uint8 frames, BICUBIC, antialias=True)``, which returns uint8 (qwen-vl-utils calls
    ``.float()`` only afterwards), so the cached uint8 frames are what it hands the processor."""

    def __init__(self):
        self.rgb = _area_reformatter()

    def reformat(self, frame, *, width: int, height: int, **_) -> "np.ndarray":
        import torch
        from torchvision.transforms.functional import InterpolationMode, resize

        rgb = torch.from_numpy(self.rgb.reformat(frame, format="rgb24").to_ndarray()).permute(2, 0, 1)
        out = resize(rgb, [height, width], interpolation=InterpolationMode.BICUBIC, antialias=True)
        return _Frame(out.permute(1, 2, 0).contiguous().numpy())


class _Frame:  # what reformat returns: something with to_ndarray()
    def __init__(self, array):
        self.array = array

    def to_ndarray(self):
        return self.array


def _area_reformatter():
    from av.video.reformatter import VideoReformatter

    return VideoReformatter()


def _reformatter(resize: str = "area"):
    """One resizer per clip. "area": swscale's area filter (a VideoReformatter keeps its swscale context
    across frames; frame.reformat would build a new one per frame, ~5x slower). "bicubic": as qwen-vl-utils."""
    if resize not in RESIZES:
        raise ValueError(f"resize must be one of {RESIZES}, got {resize!r}")
    return _BicubicResizer() if resize == "bicubic" else _area_reformatter()


def qwen_plan(total_frames: int, video_fps: float, fps: float, max_frames: int) -> tuple[np.ndarray, float, bool]:
    """(frame indices, reported rate, capped) of qwen-vl-utils' sampling of a video of total_frames frames."""
    n = qwen_nframes(total_frames, video_fps, fps=fps, max_frames=max_frames)
    capped = total_frames / video_fps * fps > _floor_even(max_frames)
    return qwen_frame_indices(total_frames, n), n / max(total_frames, 1e-6) * video_fps, capped


def _stream_fps(stream, index: PacketIndex) -> float:
    """The container's average frame rate (what decord's get_avg_fps and torchvision report), else measured."""
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else len(index.pts) / index.duration


def decode_pyav(path: str, *, fps: float, max_frames: int, min_pixels: int, max_pixels: int, total_pixels: int,
                frame_sampling: str = "exact", resize: str = "area", factor: int = FACTOR) -> Video:
    import av

    with _open(path) as container:
        if not container.streams.video:
            raise VideoDecodeError(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        index = read_packet_index(container, stream, path)
        stream_fps = _stream_fps(stream, index)
        if frame_sampling == "qwen":
            chosen, rate, capped = qwen_plan(len(index.pts), stream_fps, fps, max_frames)
        else:
            targets, rate, capped = sample_times(index.duration, fps, max_frames)
            chosen = pick_frames(index.times(index.pts), targets)
        wanted = index.pts[chosen]  # pts of each wanted frame
        size = None
        frames: list[np.ndarray] = []
        try:
            if not index.uses_pts:  # no timestamps, so no seeking: decode again from the start
                with _open(path) as again:
                    stream = again.streams.video[0]
                    stream.thread_type = "AUTO"
                    frames, size = _decode_sequential(again, stream, index, wanted, min_pixels, max_pixels, total_pixels,
                                                      frame_sampling, resize, factor)
            else:
                try:
                    frames, size = _decode_with_seeks(container, stream, index, wanted, min_pixels, max_pixels, total_pixels, path,
                                                      sampling=frame_sampling, resize=resize, factor=factor)
                except _SeekMissed:  # this container cannot seek precisely: decode forward from the start
                    with _open(path) as again:
                        stream = again.streams.video[0]
                        stream.thread_type = "AUTO"
                        frames, size = _decode_with_seeks(again, stream, index, wanted, min_pixels, max_pixels,
                                                          total_pixels, path, allow_seek=False, sampling=frame_sampling,
                                                          resize=resize, factor=factor)
        except av.error.FFmpegError as err:
            raise VideoDecodeError(f"{path}: decoding failed ({err})") from err
        if len(frames) != len(wanted):
            raise VideoDecodeError(f"{path}: decoded {len(frames)} of {len(wanted)} wanted frames (truncated or corrupt)")
    return Video(frames=np.stack(frames), fps=rate, timestamps=index.times(wanted), duration=index.duration,
                 source_fps=len(index.pts) / index.duration, capped=capped, backend="pyav", path=path,
                 source_index=np.asarray(chosen), stream_fps=stream_fps)


def _size_for(frame, n, min_pixels, max_pixels, total_pixels, sampling="exact", factor=FACTOR):
    size = qwen_frame_size if sampling == "qwen" else clip_frame_size
    return size(frame.height, frame.width, n, min_pixels=min_pixels, max_pixels=max_pixels, total_pixels=total_pixels,
                factor=factor)


class _SeekMissed(Exception):
    """A seek landed after the frame it was meant to reach (e.g. MPEG-TS, which seeks by byte estimates)."""


def _decode_with_seeks(container, stream, index, wanted, min_pixels, max_pixels, total_pixels, path, allow_seek=True,
                       sampling="exact", resize="area", factor=FACTOR):
    """Decode the wanted frames (pts, ascending, repeats allowed).

    With allow_seek, jump to the wanted frame's keyframe whenever that keyframe lies past the
    decoder's position; otherwise decode forward from the start.
    """
    frames, size, reformatter = [], None, _reformatter(resize)
    decoder = previous_found = None
    wanted_set = set(map(int, wanted))
    last = None  # (pts, frame) most recently decoded
    before_last = None  # the frame decoded before `last`
    for target in map(int, wanted):
        if last is None or last[0] != target:
            keyframe = int(index.keyframe_pts[max(0, np.searchsorted(index.keyframe_pts, target, side="right") - 1)])
            seeked = False
            if decoder is None:
                if allow_seek:
                    container.seek(keyframe, stream=stream, backward=True, any_frame=False)
                    seeked = True
                decoder = _decoded_frames(container, stream, wanted_set)
            elif allow_seek and (keyframe > last[0] or target < last[0]):
                container.seek(keyframe, stream=stream, backward=True, any_frame=False)
                decoder, last, before_last, seeked = _decoded_frames(container, stream, wanted_set), None, None, True
            for frame in decoder:
                if frame.pts is None:
                    continue
                if seeked and last is None and frame.pts > target:
                    raise _SeekMissed()
                before_last, last = last, (frame.pts, frame)
                if frame.pts >= target:
                    break
            if last is None or last[0] < target:
                raise VideoDecodeError(f"{path}: frame at {index.times([target])[0]:.3f} s could not be decoded (truncated or corrupt)")
        found = last[1]
        if last[0] > target and before_last is not None:  # the index promised a frame that never came
            found = before_last[1]
        if size is None:
            size = _size_for(found, len(wanted), min_pixels, max_pixels, total_pixels, sampling, factor)
        frames.append(frames[-1] if frames and found is previous_found else _to_rgb(found, size, reformatter))
        previous_found = found
    return frames, size


def _decoded_frames(container, stream, wanted_pts: set):
    """Frames in presentation order; packets of unwanted frames are decoded with skip_frame=NONREF.

    The decoder then drops them if no other frame references them (B-frames in most encodes);
    reference frames are decoded regardless, so every wanted frame still decodes exactly.
    Frame threading copies skip_frame per submitted packet, so the setting applies per packet.
    """
    context = stream.codec_context
    for packet in container.demux(stream):
        context.skip_frame = "DEFAULT" if packet.pts is None or packet.pts in wanted_pts else "NONREF"
        yield from packet.decode()
    context.skip_frame = "DEFAULT"


def _decode_sequential(container, stream, index, wanted, min_pixels, max_pixels, total_pixels, sampling="exact",
                       resize="area", factor=FACTOR):
    """Streams without timestamps: decode in order, frame k is the k-th decoded frame."""
    frames, size, reformatter = [], None, _reformatter(resize)
    positions = list(map(int, wanted))
    k = 0
    cursor = 0
    for frame in container.decode(stream):
        while cursor < len(positions) and positions[cursor] == k:
            if size is None:
                size = _size_for(frame, len(positions), min_pixels, max_pixels, total_pixels, sampling, factor)
            frames.append(_to_rgb(frame, size, reformatter))
            cursor += 1
        k += 1
        if cursor == len(positions):
            break
    return frames, size


def decode_all_frames(path: str) -> int:
    """Decode every frame (no conversion); returns the count. The baseline of benchmarks/bench_video.py."""
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return sum(1 for _ in container.decode(stream))


# ---------------------------------------------------------------- decord (optional)


def decord_available() -> bool:
    try:
        import decord  # noqa: F401
    except Exception:  # not installed, or a broken wheel
        return False
    return True


def decode_decord(path: str, *, fps: float, max_frames: int, min_pixels: int, max_pixels: int, total_pixels: int,
                  frame_sampling: str = "exact", resize: str = "area", factor: int = FACTOR) -> Video:
    """Same sampling rule through decord (frame times from its index); resized with swscale like PyAV."""
    import av
    import decord

    try:
        reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
        n = len(reader)
        spans = np.asarray(reader.get_frame_timestamp(np.arange(n)), dtype=np.float64).reshape(n, 2)
    except decord.DECORDError as err:
        raise VideoDecodeError(f"{path}: cannot open as a video with decord ({err})") from err
    if n == 0:
        raise VideoDecodeError(f"{path}: the video stream holds no frames")
    starts = spans[:, 0] - spans[0, 0]
    duration = float(spans[-1, 1] - spans[0, 0]) or n * 1e-3
    if frame_sampling == "qwen":
        chosen, rate, capped = qwen_plan(n, float(reader.get_avg_fps()), fps, max_frames)
    else:
        targets, rate, capped = sample_times(duration, fps, max_frames)
        chosen = pick_frames(starts, targets)
    try:
        batch = reader.get_batch(chosen.tolist()).asnumpy()
    except decord.DECORDError as err:
        raise VideoDecodeError(f"{path}: decoding failed with decord ({err})") from err
    size = qwen_frame_size if frame_sampling == "qwen" else clip_frame_size
    h, w = size(batch.shape[1], batch.shape[2], len(chosen), min_pixels=min_pixels, max_pixels=max_pixels,
                total_pixels=total_pixels, factor=factor)
    reformatter = _reformatter(resize)
    frames = np.stack([_to_rgb(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24"), (h, w), reformatter)
                       for f in batch])
    return Video(frames=frames, fps=rate, timestamps=starts[chosen], duration=duration, source_fps=n / duration,
                 capped=capped, backend="decord", path=path, source_index=np.asarray(chosen),
                 stream_fps=float(reader.get_avg_fps()))


# ---------------------------------------------------------------- entry point


DECORD_UNSAFE_SUFFIXES = (".ts", ".m2ts", ".mts")  # decord's random access returns wrong frames on MPEG-TS


def resolve_backend(backend: str, path=None) -> str:
    """The backend that will decode ``path``: "auto" is decord when installed, except for MPEG-TS."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        unsafe = path is not None and str(path).lower().endswith(DECORD_UNSAFE_SUFFIXES)
        return "decord" if decord_available() and not unsafe else "pyav"
    if backend == "decord" and not decord_available():
        raise ImportError("backend='decord' needs the decord package (pip install 'tempsamp[decord]')")
    return backend


def decode(path, *, fps: float = 2.0, max_frames: int = 256, min_pixels: int, max_pixels: int, total_pixels: int,
           backend: str = "pyav", frame_sampling: str = "exact", resize: str = "area", factor: int = FACTOR) -> Video:
    """Sample frames from ``path`` (no cache); see the module docstring for the rules.

    frame_sampling: "exact" (default: frames at k / fps s) or "qwen" (qwen-vl-utils 0.0.14's count,
    indices and sizes). resize: "area" (swscale's area filter, default) or "bicubic" (qwen-vl-utils'
    torchvision bicubic with antialiasing on uint8 frames). factor: frame sides are multiples of it, the
    model's patch x merge (28 for Qwen2/2.5-VL, 32 for Qwen3-VL)."""
    _reformatter(resize)  # validates the name before any decoding
    if frame_sampling not in FRAME_SAMPLINGS:
        raise ValueError(f"frame_sampling must be one of {FRAME_SAMPLINGS}, got {frame_sampling!r}")
    path = os.fspath(path)
    if Path(path).is_dir():  # an unreadable video wherever videos are read (counted, reported), not "not found"
        raise VideoDecodeError(f"{path}: is a folder, not a video file")
    if not Path(path).is_file():
        raise FileNotFoundError(errno.ENOENT, "video not found", path)
    backend = resolve_backend(backend, path)
    fn = decode_decord if backend == "decord" else decode_pyav
    return fn(path, fps=fps, max_frames=max_frames, min_pixels=min_pixels, max_pixels=max_pixels, total_pixels=total_pixels,
              frame_sampling=frame_sampling, resize=resize, factor=factor)
