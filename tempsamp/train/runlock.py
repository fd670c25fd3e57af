"""One training run per output_dir: a lock file, and no silent restart over a finished run.

The lock is ``OUTPUT_DIR/.tempsamp.lock``, held with ``flock`` by the process that trains (or by
the launcher that becomes torchrun: the descriptor survives its exec, so the lock lasts exactly as
long as the run and the kernel drops it when the holder dies, however it dies). The file names the
holder (PID, host, start time) for the refusal message. A file left by a holder that is gone
(killed) is taken over with a note; one written on another host cannot be checked from here, so it
is refused until the user deletes it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from tempsamp.errors import UserError

LOCK_NAME = ".tempsamp.lock"
# Set by the launcher for the torchrun workers it starts: it holds the lock of this output_dir.
HELD_BY_LAUNCHER = "TEMPSAMP_OUTPUT_DIR_LOCKED"
CREATED_BY_LAUNCHER = "TEMPSAMP_OUTPUT_DIR_CREATED"
# What a training run writes into its output_dir (anything else, e.g. an eval/ folder, is not the run's).
RUN_FILES = ("metrics.jsonl", "events.jsonl", "config.yaml", "layout.json", "speed.json", "final-model", "tensorboard",
             "queries.jsonl", "selection.json", "plots")

_held: dict[str, int] = {}  # output_dir -> descriptor, for the locks this process holds
_created: set[str] = set()  # output_dirs this process made (removed again if the run wrote nothing)


def _key(output_dir) -> str:
    return os.path.realpath(output_dir)


def run_contents(output_dir) -> list[str]:
    """The names in ``output_dir`` that belong to a training run (checkpoints included), sorted."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    names = [p.name for p in root.iterdir() if p.name in RUN_FILES or p.name.startswith(("checkpoint-", ".checkpoint-"))]
    return sorted(names)


def check_fresh_start(output_dir, *, resume: bool, overwrite: bool, say=print) -> None:
    """Refuse to train into a folder that holds a run, unless resuming or told to overwrite it.

    ``overwrite`` removes the run's own files (checkpoints, metrics, exports, logs) and keeps the rest.
    """
    import shutil

    found = run_contents(output_dir)
    if not found or resume:
        return
    if not overwrite:
        shown = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
        raise UserError(f"output_dir {output_dir} already holds a training run ({shown}); add --resume to continue "
                        "it, --overwrite to replace it, or choose another output_dir")
    for name in found:
        path = Path(output_dir) / name
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    say(f"--overwrite: removed the previous run in {output_dir} ({', '.join(found)})")


def acquire(output_dir, say=print, inheritable: bool = False, created: bool = False) -> None:
    """Take the lock of ``output_dir`` for this process, or raise UserError naming its holder.

    Re-entrant within a process (the demo and tests train several times in one process).
    ``inheritable``: keep the descriptor open across exec (the launcher that becomes torchrun).
    ``created``: the caller made ``output_dir`` for this run (``release`` removes it if still empty).
    """
    key = _key(output_dir)
    if key in _held:
        return
    if os.environ.get(HELD_BY_LAUNCHER) == key:
        return  # the launcher (torchrun, our parent) holds it
    root = Path(output_dir)
    created = created or not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _describe(_read(fd))
        os.close(fd)
        raise UserError(f"output_dir {output_dir} is in use by another training run ({holder}); wait for it to end, "
                        "or choose another output_dir") from None
    previous = _read(fd)
    if previous.get("pid") is not None:  # a lock file whose holder did not remove it
        host = previous.get("host")
        if host != socket.gethostname():
            os.close(fd)
            raise UserError(f"output_dir {output_dir} is locked by a run on another host ({_describe(previous)}); "
                            f"if that run has ended, delete {path}")
        # the flock is free, so the holder is gone (a live process with its PID is another one)
        say(f"note: taking over the stale lock of {output_dir} ({_describe(previous)}, no longer running)")
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                              "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
    os.set_inheritable(fd, inheritable)
    _held[key] = fd
    if created:
        _created.add(key)


def launcher_environment(output_dir, env: dict) -> dict:
    """``env`` for the torchrun workers of a launcher that holds the lock of ``output_dir``."""
    created = {CREATED_BY_LAUNCHER: "1"} if _key(output_dir) in _created else {}
    return {**env, HELD_BY_LAUNCHER: _key(output_dir), **created}


def release(output_dir) -> None:
    """End of a run: drop this process's lock and remove the file (also the launcher's, from its rank 0)."""
    key = _key(output_dir)
    path = Path(output_dir) / LOCK_NAME
    fd = _held.pop(key, None)
    if fd is None and (os.environ.get(HELD_BY_LAUNCHER) != key or os.environ.get("RANK", "0") != "0"):
        return
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    if fd is not None:
        os.close(fd)  # closing drops the flock
    if key in _created or (fd is None and os.environ.get(CREATED_BY_LAUNCHER)):
        _created.discard(key)
        try:
            Path(output_dir).rmdir()  # only if empty: a run stopped before writing anything leaves no folder
        except OSError:
            pass


def _read(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (ValueError, UnicodeDecodeError):
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "holder unknown"
    return f"PID {holder.get('pid')} on host {holder.get('host')}, since {holder.get('since')}"
