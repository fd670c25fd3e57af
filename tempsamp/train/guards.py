"""A training run that fails loudly and loses nothing (called from ``train``; docs/decisions.md,
"Failing loudly").

- ``preflight_videos``: before step 0, open the training videos (all, or a seeded sample of
  ``preflight_videos`` of them) and stop with the list when none, or more than
  ``max_unreadable_fraction``, can be read.
- ``GracefulStop``: SIGTERM / Ctrl-C ask the loop to finish the current step, write a checkpoint
  and stop (exit 128 + signal); a second signal stops at once (the last checkpoint stays).
- ``stop_reason``: a signal (agreed over processes), or more skipped steps than
  ``max_skipped_fraction`` of the run's steps: the run checkpoints and stops with a non-zero exit.
- ``summary``: the run's last line: steps applied, skipped and why, faults, where the checkpoint is.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import threading

from tempsamp.errors import UserError


def probe_video(path) -> str | None:
    """None when ``path`` opens as a video and yields a frame, else why not (cheap: one frame)."""
    if not path:
        return "no video file for this query (set videos=)"
    if not os.path.isfile(path):
        return "not found"
    import av

    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            if not container.streams.video:
                return "no video stream"
            next(container.decode(video=0))
    except StopIteration:
        return "no frames"
    except Exception as err:  # noqa: BLE001 - PyAV raises many kinds; any of them means unreadable
        return f"cannot be decoded ({type(err).__name__}: {' '.join(str(err).split())[:120]})"
    return None


def preflight_videos(examples, cfg, say=print) -> None:
    """Stop before step 0 (UserError) when none, or too many, of the training videos can be read."""
    if cfg.videos and not os.path.isdir(cfg.videos):
        raise UserError(f"videos={cfg.videos}: no such folder")
    if cfg.preflight_videos <= 0:
        return
    paths = sorted({str(ex.video_path) if ex.video_path else "" for ex in examples})
    sample = paths if len(paths) <= cfg.preflight_videos else random.Random(cfg.seed).sample(paths, cfg.preflight_videos)
    bad = [(p or "(none)", why) for p in sample for why in [probe_video(p)] if why]
    checked = f"{len(sample)} of {len(paths)}" if len(sample) < len(paths) else f"all {len(paths)}"
    say(f"pre-flight: {checked} training videos opened, {len(sample) - len(bad)} readable")
    if not bad:
        return
    limit = cfg.max_unreadable_fraction * len(sample)
    if len(bad) < len(sample) and len(bad) <= limit:
        say(f"pre-flight: {len(bad)} unreadable (within max_unreadable_fraction={cfg.max_unreadable_fraction}); "
            f"their steps use the other videos, first: {bad[0][0]}: {bad[0][1]}")
        return
    for path, why in bad[:20]:
        print(f"  unreadable: {path}: {why}", file=sys.stderr)
    if len(bad) > 20:
        print(f"  ... and {len(bad) - 20} more", file=sys.stderr)
    what = "none" if len(bad) == len(sample) else f"only {len(sample) - len(bad)}"
    raise UserError(f"{what} of the {len(sample)} training videos checked can be read ({len(bad)} unreadable, "
                    f"first {bad[0][0]}: {bad[0][1]}; limit max_unreadable_fraction={cfg.max_unreadable_fraction}); "
                    "fix videos= or train_annotations, or raise max_unreadable_fraction")


class GracefulStop:
    """SIGTERM / SIGINT: note the signal, let the step finish; a second one raises KeyboardInterrupt."""

    def __init__(self):
        self.signal: str | None = None
        self._previous: dict = {}

    def install(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt  # asked twice: stop now; the newest checkpoint stays as it is
        self.signal = signal.Signals(signum).name
        print(f"\n{self.signal}: finishing this step, then a checkpoint and stop (send it again to stop at once "
              "without saving this step)", file=sys.stderr, flush=True)

    @property
    def exit_code(self) -> int:
        return 128 + int(getattr(signal, self.signal)) if self.signal else 1


def stop_reason(stop: GracefulStop, counters, done: int, end: int, cfg, parallel) -> str | None:
    """Why the run must stop after step ``done`` (None: go on); the same answer on every process."""
    asked = parallel.sum(float(stop.signal is not None)) > 0  # a signal may reach one process only: stop together
    if asked:
        return f"stopped by {stop.signal or 'a signal to another process'} after step {done} of {end}"
    if counters.skipped_steps > cfg.max_skipped_fraction * end:
        return (f"stopped after step {done} of {end}: {counters.skipped_steps} steps skipped, more than "
                f"max_skipped_fraction={cfg.max_skipped_fraction} of {end} ({_skip_causes(counters)}); "
                "see events.jsonl")
    return None


def _skip_causes(counters) -> str:
    return f"no usable video {counters.skipped_no_video}, non-finite loss or gradient {counters.skipped_non_finite}"


def summary(counters, done: int, total: int, checkpoint) -> str:
    """The last line of a run."""
    faults = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counters.faults().items())
    return (f"train: {done} of {total} steps done: {done - counters.skipped_steps} applied, {counters.skipped_steps} "
            f"skipped ({_skip_causes(counters)}); faults: {faults}, loss spikes {counters.loss_spikes}; "
            f"checkpoint: {checkpoint or 'none'}")
