"""``sample_frames``: sampled frames from an on-disk cache, decoding only on a miss.

Key: the file's identity (resolved absolute path, size, mtime_ns: a stat, no reading) and every
sampling parameter (fps, max_frames, min/max/total pixels, the backend actually used) plus a
format version. A file replaced in place gets a new mtime and so a new key; a dataset moved to
another folder is decoded again. Stale entries are never deleted (remove the folder to reclaim space).

Entry: ``<cache_dir>/<key[:2]>/<key>.npy`` (the uint8 frames, np.save, no pickle) and
``<key>.json`` (fps, timestamps, duration, shape, the source's identity). Crash safety: each file is
written to a temporary name in the same folder, fsynced, then renamed over the final name
(os.replace is atomic), the .npy first and the .json last, so the .json is the commit mark: a
reader never sees a half-written file, and a .npy without its .json is not an entry. Temporary
files left by a crash are never read. Concurrency: two processes computing the same entry both
write their own temporaries and both renames succeed; decoding is deterministic, so the last
rename leaves the same bytes. A corrupt entry (unreadable JSON, a .npy that fails to load or does
not match the JSON's shape) is ignored, logged, and rewritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from tempsamp.video.sampling import Video, VideoDecodeError, decode, resolve_backend

__all__ = ["Video", "VideoDecodeError", "sample_frames", "cache_key", "CACHE_VERSION"]

CACHE_VERSION = 1
log = logging.getLogger(__name__)


def sample_frames(path, *, fps: float = 2.0, max_frames: int = 256, min_pixels: int, max_pixels: int,
                  total_pixels: int, cache_dir=None, backend: str = "pyav", frame_sampling: str = "exact",
                  resize: str = "area", factor: int = 28) -> Video:
    """Frames of ``path`` sampled at ``fps`` under the frame cap and pixel budget (tempsamp.video.sampling).

    Raises FileNotFoundError (naming the file) for a missing file and VideoDecodeError for one that
    cannot be decoded. With ``cache_dir`` the result is read from / written to the on-disk cache.
    ``frame_sampling="qwen"``: qwen-vl-utils' frame count, indices and sizes; ``resize="bicubic"``: its
    resize filter (tempsamp.video.sampling).
    """
    path = os.fspath(path)
    params = {"fps": float(fps), "max_frames": int(max_frames), "min_pixels": int(min_pixels),
              "max_pixels": int(max_pixels), "total_pixels": int(total_pixels)}
    if frame_sampling != "exact":  # only then in the key: entries of the default sampling keep their keys
        params["frame_sampling"] = frame_sampling
    if resize != "area":  # likewise
        params["resize"] = resize
    if factor != 28:  # likewise (Qwen3-VL frames are multiples of 32)
        params["factor"] = factor
    if cache_dir is None:
        return decode(path, backend=backend, **params)
    try:
        stat = os.stat(path)
    except FileNotFoundError as err:
        raise FileNotFoundError(err.errno, "video not found", path) from err
    params["backend"] = resolve_backend(backend, path)
    source = {"path": str(Path(path).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    key = cache_key(source, params)
    folder = Path(cache_dir) / key[:2]
    cached = read_entry(folder, key, path)
    if cached is not None:
        return cached
    video = decode(path, **params)
    try:
        write_entry(folder, key, video, source, params)
    except OSError as err:  # a read-only, full or misplaced cache must not stop the run: go on uncached
        _warn_once(cache_dir, f"frame cache {cache_dir}: cannot write ({err.strerror or err}); "
                              "going on without it (frames are decoded every time)")
    return video


_WARNED: set = set()


def _warn_once(cache_dir, message: str) -> None:
    import sys

    if str(cache_dir) not in _WARNED:
        _WARNED.add(str(cache_dir))
        if logging.getLogger().handlers:  # the application set up logging
            log.warning(message)
        else:
            print(f"warning: {message}", file=sys.stderr)


def cache_key(source: dict, params: dict) -> str:
    blob = json.dumps({"version": CACHE_VERSION, "source": source, "params": params}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def read_entry(folder: Path, key: str, path: str) -> Video | None:
    """The cached Video, or None for a miss or an unusable (corrupt, half-written) entry."""
    meta_path, frames_path = folder / f"{key}.json", folder / f"{key}.npy"
    try:
        meta = json.loads(meta_path.read_text())
    except (FileNotFoundError, NotADirectoryError):  # no entry (or the cache path is a file: warned on write)
        return None
    except (OSError, ValueError) as err:
        log.warning("frame cache: ignoring unreadable %s (%s)", meta_path, err)
        return None
    try:
        frames = np.load(frames_path, allow_pickle=False)
        if frames.dtype != np.uint8 or list(frames.shape) != meta["shape"]:
            raise ValueError(f"frames {frames.dtype} {list(frames.shape)} do not match the entry's {meta['shape']}")
        timestamps = np.asarray(meta["timestamps"], dtype=np.float64)
        if timestamps.shape != (frames.shape[0],):
            raise ValueError("timestamps do not match the frames")
        index = meta.get("source_index")
        return Video(frames=frames, fps=float(meta["fps"]), timestamps=timestamps, duration=float(meta["duration"]),
                     source_fps=float(meta["source_fps"]), capped=bool(meta["capped"]), backend=meta["backend"], path=path,
                     source_index=None if index is None else np.asarray(index, dtype=np.int64),
                     stream_fps=meta.get("stream_fps"))
    except FileNotFoundError:  # a .json whose .npy was removed: not an entry
        return None
    except (OSError, ValueError, KeyError, TypeError, EOFError) as err:
        log.warning("frame cache: ignoring corrupt entry %s (%s); it will be rewritten", frames_path, err)
        return None


def write_entry(folder: Path, key: str, video: Video, source: dict, params: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"version": CACHE_VERSION, "source": source, "params": params, "shape": list(video.frames.shape),
            "fps": video.fps, "timestamps": [float(t) for t in video.timestamps], "duration": video.duration,
            "source_fps": video.source_fps, "capped": video.capped, "backend": video.backend,
            "source_index": None if video.source_index is None else [int(i) for i in video.source_index],
            "stream_fps": video.stream_fps}
    _atomic_write(folder / f"{key}.npy", lambda f: np.save(f, np.ascontiguousarray(video.frames), allow_pickle=False))
    _atomic_write(folder / f"{key}.json", lambda f: f.write(json.dumps(meta).encode()))


def _atomic_write(final: Path, write) -> None:
    """Write through ``write(file)`` to a temporary in the same folder, fsync, rename over ``final``."""
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes 0600; a shared cache must be readable by others
        os.replace(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
