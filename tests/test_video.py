"""Frame sampling (tempsamp.video.sampling) and the frame cache (tempsamp.video.cache).

Test videos carry a frame counter: frame j's index is drawn as 16 black/white 28x28 blocks, so the
frame a sampler returned can be read back from its pixels after compression and resizing.
"""

from __future__ import annotations

import json
import multiprocessing
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from tempsamp.video import Video, VideoDecodeError, clip_frame_size, sample_frames, sample_times, smart_resize
from tempsamp.video import cache as cache_mod
from tempsamp.video import sampling

av = pytest.importorskip("av")

BUDGET = dict(min_pixels=56 * 56, max_pixels=56 * 56, total_pixels=56 * 56 * 1000)
SIDE = 112  # 4x4 blocks of 28 px


def counter_image(j: int) -> np.ndarray:
    bits = [(j >> b) & 1 for b in range(16)]
    img = np.zeros((SIDE, SIDE, 3), np.uint8)
    for b, bit in enumerate(bits):
        r, c = divmod(b, 4)
        img[r * 28:(r + 1) * 28, c * 28:(c + 1) * 28] = 255 * bit
    return img


def read_counter(frame: np.ndarray) -> int:
    """The counter of a (resized) frame: the mean of each block's central quarter."""
    h, w = frame.shape[:2]
    value = 0
    for b in range(16):
        r, c = divmod(b, 4)
        y0, y1 = int((r + 0.25) * h / 4), int((r + 0.75) * h / 4)
        x0, x1 = int((c + 0.25) * w / 4), int((c + 0.75) * w / 4)
        if frame[y0:y1, x0:x1].mean() > 128:
            value |= 1 << b
    return value


def write_counter_video(path: Path, times, *, gop: int = 10, bframes: int = 2, fmt: str = "mp4", rate: int = 10,
                        faststart: bool = False) -> Path:
    """Frame j (counter j) shown from times[j] seconds (millisecond timestamps, so VFR is possible)."""
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", format=fmt, options=options) as container:
        stream = container.add_stream("libx264", rate=rate, options={
            "g": str(gop), "bf": str(bframes), "crf": "10", "preset": "veryfast", "x264-params": "threads=1:scenecut=0"})
        stream.width = stream.height = SIDE
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for j, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(counter_image(j), format="rgb24")
            frame.pts, frame.time_base = int(round(t * 1000)), Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def expected_counters(times, targets):
    """The frame on screen at each target: the last frame whose time is <= target."""
    times = np.asarray(times)
    return [int(np.searchsorted(times, t + 1e-6, side="right") - 1) for t in targets]


@pytest.fixture(scope="module")
def cfr_video(tmp_path_factory) -> Path:
    """10 s at 10 fps, keyframe every second, B-frames."""
    return write_counter_video(tmp_path_factory.mktemp("v") / "cfr.mp4", np.arange(100) / 10)


# ---------------------------------------------------------------- what is sampled


def test_2fps_frames_are_the_frames_at_i_over_2_seconds(cfr_video):
    video = sample_frames(cfr_video, fps=2.0, **BUDGET)
    assert video.frames.dtype == np.uint8 and video.frames.shape == (20, 56, 56, 3)
    assert video.fps == 2.0 and not video.capped and video.duration == pytest.approx(10.0)
    np.testing.assert_allclose(video.timestamps, np.arange(20) / 2, atol=1e-6)
    assert [read_counter(f) for f in video.frames] == [5 * k for k in range(20)]


@pytest.mark.parametrize("gop,bframes", [(1, 0), (10, 0), (10, 3), (250, 3)])
@pytest.mark.parametrize("fps", [0.5, 2.0, 7.0, 25.0])
def test_seeking_and_sequential_decoding_pick_the_same_frames(tmp_path, gop, bframes, fps):
    times = np.arange(60) / 10
    path = write_counter_video(tmp_path / "v.mp4", times, gop=gop, bframes=bframes)
    video = sample_frames(path, fps=fps, **BUDGET)
    targets = sample_times(6.0, fps, 256)[0]
    expected = expected_counters(times, targets)
    assert [read_counter(f) for f in video.frames] == expected  # repeats when fps > source fps
    np.testing.assert_allclose(video.timestamps, times[expected], atol=1e-6)


def test_odd_frame_rate_29_97(tmp_path):
    times = np.round(np.arange(150) * 1001 / 30) / 1000  # as written: millisecond timestamps
    path = write_counter_video(tmp_path / "ntsc.mp4", times, rate=30)
    video = sample_frames(path, fps=2.0, **BUDGET)
    assert len(video) == 11  # 150 frames last 5.005 s: t = 0, 0.5, ..., 5.0
    targets = np.arange(11) / 2
    assert [read_counter(f) for f in video.frames] == expected_counters(times, targets)
    assert np.all(video.timestamps <= targets + 1e-6)
    assert np.all(targets - video.timestamps < 0.034)


def test_variable_frame_rate_uses_presentation_times(tmp_path):
    times = [0.0, 0.1, 0.25, 0.3, 0.7, 0.8, 0.85, 1.5, 1.6, 2.2, 2.9, 3.0]
    path = write_counter_video(tmp_path / "vfr.mp4", times)
    video = sample_frames(path, fps=2.0, **BUDGET)
    expected = expected_counters(times, np.arange(len(video)) / 2)
    assert [read_counter(f) for f in video.frames] == expected
    np.testing.assert_allclose(video.timestamps, np.asarray(times)[expected], atol=1e-6)


@pytest.mark.parametrize("fmt,suffix", [("matroska", "mkv"), ("mpegts", "ts")])
def test_containers_without_stream_duration_or_with_a_start_offset(tmp_path, fmt, suffix):
    times = np.arange(40) / 10  # mkv: no stream duration; mpegts: timestamps start at 0.2 s (not 0)
    path = write_counter_video(tmp_path / f"v.{suffix}", times, fmt=fmt)
    video = sample_frames(path, fps=2.0, **BUDGET)
    assert video.duration == pytest.approx(4.0, abs=0.11)
    assert [read_counter(f) for f in video.frames] == [0, 5, 10, 15, 20, 25, 30, 35]
    np.testing.assert_allclose(video.timestamps, np.arange(8) / 2, atol=1e-6)


def test_stream_without_timestamps_decodes_in_order(tmp_path):
    path = write_counter_video(tmp_path / "v.h264", np.arange(30) / 10, fmt="h264")
    video = sample_frames(path, fps=2.0, **BUDGET)
    # a raw stream carries no times: FFmpeg assumes 25 fps, so frame j is at j / 25 s
    rate = 1 / (video.duration / 30)
    assert [read_counter(f) for f in video.frames] == expected_counters(np.arange(30) / rate, np.arange(len(video)) / 2)


def test_frame_cap_lowers_the_rate_uniformly_and_reports_it(cfr_video):
    video = sample_frames(cfr_video, fps=2.0, max_frames=7, **BUDGET)
    assert len(video) == 7 and video.capped
    assert video.fps == pytest.approx(0.7)  # 7 frames over 10 s: frame i is at i / 0.7 s
    expected = expected_counters(np.arange(100) / 10, np.arange(7) / 0.7)
    assert [read_counter(f) for f in video.frames] == expected
    assert np.all(np.abs(video.timestamps - np.arange(7) / video.fps) < 0.1 + 1e-6)


def test_sample_times_edges():
    assert list(sample_times(10.0, 2.0, 256)[0]) == [k / 2 for k in range(20)]
    assert len(sample_times(10.2, 2.0, 256)[0]) == 21  # t = 10.0 < 10.2 is still inside the video
    assert list(sample_times(0.1, 2.0, 256)[0]) == [0.0]
    with pytest.raises(ValueError):
        sample_times(10.0, 0.0, 256)


# ---------------------------------------------------------------- pixel budget


@pytest.mark.parametrize("hw", [(480, 640), (360, 640), (1080, 1920), (64, 64), (112, 200), (720, 406)])
@pytest.mark.parametrize("budget", [(16 * 784, 256 * 784), (4 * 784, 64 * 784), (128 * 784, 768 * 784)])
def test_smart_resize_multiples_of_28_within_budget_keeping_aspect(hw, budget):
    h, w = smart_resize(*hw, min_pixels=budget[0], max_pixels=budget[1])
    assert h % 28 == 0 and w % 28 == 0
    assert budget[0] <= h * w <= budget[1]
    assert abs(np.log((h / w) / (hw[0] / hw[1]))) < 0.35  # aspect kept up to 28-px rounding


def test_smart_resize_max_wins_when_min_and_max_cannot_both_hold():
    h, w = smart_resize(480, 640, min_pixels=3136, max_pixels=3136)  # no 28-multiple 3:4 pair has area 3136
    assert h % 28 == 0 and w % 28 == 0 and h * w <= 3136
    assert smart_resize(64, 64, min_pixels=3136, max_pixels=3136) == (56, 56)


def test_clip_budget_shrinks_frames_but_not_below_min():
    kw = dict(min_pixels=16 * 784, max_pixels=256 * 784, total_pixels=3584 * 784)
    assert clip_frame_size(480, 640, 10, **kw) == smart_resize(480, 640, min_pixels=16 * 784, max_pixels=256 * 784)
    h, w = clip_frame_size(480, 640, 60, **kw)
    assert 60 * h * w <= 3584 * 784 and h * w >= 16 * 784
    h, w = clip_frame_size(480, 640, 1000, **kw)  # total / T below min: frames stay at min
    assert h * w >= 16 * 784


def test_sample_frames_applies_the_clip_budget(cfr_video):
    video = sample_frames(cfr_video, fps=2.0, min_pixels=4 * 784, max_pixels=64 * 784, total_pixels=20 * 9 * 784)
    t, h, w, _ = video.frames.shape
    assert t == 20 and h % 28 == 0 and w % 28 == 0
    assert t * h * w <= 20 * 9 * 784 and h * w >= 4 * 784


# ---------------------------------------------------------------- bad files


def test_missing_file_raises_file_not_found_naming_it(tmp_path):
    missing = tmp_path / "nope.mp4"
    for cache_dir in (None, tmp_path / "cache"):
        with pytest.raises(FileNotFoundError, match="nope.mp4"):
            sample_frames(missing, cache_dir=cache_dir, **BUDGET)


def corrupt_files(folder: Path, good: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    data = good.read_bytes()
    files = {"random.mp4": rng.integers(0, 256, 50_000, dtype=np.uint8).tobytes(), "empty.mp4": b"",
             "text.mp4": b"not a video\n" * 100, "truncated.mp4": data[: len(data) // 2]}
    out = {}
    for name, blob in files.items():
        out[name] = folder / name
        out[name].write_bytes(blob)
    fast = write_counter_video(folder / "fast.mp4", np.arange(100) / 10, faststart=True).read_bytes()
    out["truncated_faststart.mp4"] = folder / "truncated_faststart.mp4"
    out["truncated_faststart.mp4"].write_bytes(fast[: len(fast) // 2])  # index intact, frames missing
    return out


def test_corrupt_files_raise_video_decode_error_naming_the_file(tmp_path, cfr_video):
    for name, path in corrupt_files(tmp_path, cfr_video).items():
        with pytest.raises(VideoDecodeError, match=name):
            sample_frames(path, **BUDGET)
        with pytest.raises(VideoDecodeError, match=name):  # and the cache stores nothing for it
            sample_frames(path, cache_dir=tmp_path / "cache", **BUDGET)
    assert not list((tmp_path / "cache").rglob("*.npy"))


# ---------------------------------------------------------------- cache


def entry_files(cache_dir: Path):
    return sorted(cache_dir.rglob("*.npy")), sorted(cache_dir.rglob("*.json"))


def assert_same_video(a: Video, b: Video):
    assert a.frames.dtype == b.frames.dtype and np.array_equal(a.frames, b.frames)
    assert np.array_equal(a.timestamps, b.timestamps)
    assert (a.fps, a.duration, a.source_fps, a.capped, a.backend) == (b.fps, b.duration, b.source_fps, b.capped, b.backend)


def test_cache_hit_equals_miss_bit_for_bit_without_decoding(tmp_path, cfr_video, monkeypatch):
    cache_dir = tmp_path / "cache"
    miss = sample_frames(cfr_video, cache_dir=cache_dir, **BUDGET)
    npys, jsons = entry_files(cache_dir)
    assert len(npys) == 1 and len(jsons) == 1
    assert_same_video(miss, sample_frames(cfr_video, **BUDGET))  # the same as no cache at all

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded on a cache hit")

    monkeypatch.setattr(cache_mod, "decode", no_decoding)
    assert_same_video(miss, sample_frames(cfr_video, cache_dir=cache_dir, **BUDGET))
    with pytest.raises(AssertionError, match="decoded"):  # other parameters: another entry
        sample_frames(cfr_video, fps=1.0, cache_dir=cache_dir, **BUDGET)


def test_cache_key_follows_the_file(tmp_path, cfr_video):
    cache_dir = tmp_path / "cache"
    path = tmp_path / "v.mp4"
    path.write_bytes(cfr_video.read_bytes())
    first = sample_frames(path, cache_dir=cache_dir, **BUDGET)
    write_counter_video(path, np.arange(30) / 10)  # replaced in place: new size and mtime
    second = sample_frames(path, cache_dir=cache_dir, **BUDGET)
    assert len(first) == 20 and len(second) == 6
    assert len(entry_files(cache_dir)[0]) == 2


def _only_entry(cache_dir: Path) -> tuple[Path, Path]:
    (npy,), (meta,) = entry_files(cache_dir)
    return npy, meta


@pytest.mark.parametrize("damage", ["truncated_npy", "garbage_npy", "missing_json", "garbage_json", "wrong_shape", "pickle_npy"])
def test_damaged_entry_is_ignored_and_rewritten(tmp_path, cfr_video, damage):
    cache_dir = tmp_path / "cache"
    good = sample_frames(cfr_video, cache_dir=cache_dir, **BUDGET)
    npy, meta = _only_entry(cache_dir)
    if damage == "truncated_npy":
        npy.write_bytes(npy.read_bytes()[: npy.stat().st_size // 2])
    elif damage == "garbage_npy":
        npy.write_bytes(b"\x93NUMPY garbage")
    elif damage == "missing_json":  # a crash between the two renames
        meta.unlink()
    elif damage == "garbage_json":
        meta.write_text("{not json")
    elif damage == "wrong_shape":
        np.save(npy, good.frames[:3])
    elif damage == "pickle_npy":  # never unpickled
        np.save(npy, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    again = sample_frames(cfr_video, cache_dir=cache_dir, **BUDGET)
    assert_same_video(good, again)
    npy, meta = _only_entry(cache_dir)  # rewritten: a valid entry again
    assert np.array_equal(np.load(npy, allow_pickle=False), good.frames)
    assert json.loads(meta.read_text())["shape"] == list(good.frames.shape)


def test_crash_mid_write_leaves_nothing_that_is_read(tmp_path, cfr_video, monkeypatch):
    cache_dir = tmp_path / "cache"
    real_save = np.save

    def crash_halfway(f, arr, allow_pickle=False):
        f.write(b"\x93NUMPY partial")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(cache_mod.np, "save", crash_halfway)
    with pytest.raises(KeyboardInterrupt):
        sample_frames(cfr_video, cache_dir=cache_dir, **BUDGET)
    assert entry_files(cache_dir) == ([], [])
    monkeypatch.setattr(cache_mod.np, "save", real_save)
    # a hard kill leaves its temporary behind: it is never read
    folder = next(p for p in cache_dir.iterdir() if p.is_dir())
    (folder / ".leftover.npy.abc.tmp").write_bytes(b"\x93NUMPY partial")
    video = sample_frames(cfr_video, cache_dir=cache_dir, **BUDGET)
    assert_same_video(video, sample_frames(cfr_video, **BUDGET))
    assert len(entry_files(cache_dir)[0]) == 1


def _worker(path, cache_dir, barrier, queue, rounds):
    try:
        barrier.wait(timeout=60)
        digests = []
        for _ in range(rounds):
            video = sample_frames(path, cache_dir=cache_dir, **BUDGET)
            digests.append((video.frames.shape, int(video.frames.astype(np.int64).sum()), video.timestamps.tolist()))
        queue.put(("ok", digests))
    except BaseException as err:  # reported to the parent
        queue.put(("error", repr(err)))


def test_concurrent_writers_and_readers_all_succeed(tmp_path, cfr_video):
    cache_dir = tmp_path / "cache"
    expected = sample_frames(cfr_video, **BUDGET)
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(cfr_video), str(cache_dir), barrier, queue, 4)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    want = (expected.frames.shape, int(expected.frames.astype(np.int64).sum()), expected.timestamps.tolist())
    for status, digests in results:
        assert status == "ok", digests
        assert all(d == want for d in digests)
    assert len(entry_files(cache_dir)[0]) == 1
    assert not [p for p in cache_dir.rglob("*.tmp")]
    assert_same_video(expected, sample_frames(cfr_video, cache_dir=cache_dir, **BUDGET))


# ---------------------------------------------------------------- backends


def test_backend_argument(cfr_video):
    with pytest.raises(ValueError, match="backend"):
        sample_frames(cfr_video, backend="opencv", **BUDGET)
    if not sampling.decord_available():
        with pytest.raises(ImportError, match="decord"):
            sample_frames(cfr_video, backend="decord", **BUDGET)
        assert sampling.resolve_backend("auto") == "pyav"


def test_auto_backend_never_gives_mpegts_to_decord():
    assert sampling.resolve_backend("auto", "clip.TS") == "pyav"
    assert sampling.resolve_backend("auto", "clip.mp4") == ("decord" if sampling.decord_available() else "pyav")


@pytest.mark.skipif(not sampling.decord_available(), reason="decord not installed (optional backend)")
@pytest.mark.parametrize("name,times,kw", [
    ("cfr.mp4", np.arange(100) / 10, dict(gop=250, bframes=3)),
    ("vfr.mp4", [0.0, 0.1, 0.25, 0.3, 0.7, 0.8, 0.85, 1.5, 1.6, 2.2, 2.9, 3.0], {}),
    ("v.mkv", np.arange(40) / 10, dict(fmt="matroska")),
])
@pytest.mark.parametrize("fps", [2.0, 0.7])
def test_decord_backend_picks_the_same_frames(tmp_path, name, times, kw, fps):
    path = write_counter_video(tmp_path / name, times, **kw)
    a = sample_frames(path, fps=fps, backend="pyav", **BUDGET)
    b = sample_frames(path, fps=fps, backend="decord", **BUDGET)
    assert b.backend == "decord"
    assert [read_counter(f) for f in a.frames] == [read_counter(f) for f in b.frames]
    np.testing.assert_allclose(a.timestamps, b.timestamps, atol=1e-3)
