"""Helpers the tests share for the processes they launch (not a test module)."""

from __future__ import annotations

import subprocess


def kill_tree(run: subprocess.Popen) -> None:
    """SIGKILL a launcher and every process under it (torchrun's workers need not share its group)."""
    import psutil

    parent = psutil.Process(run.pid)
    processes = [parent, *parent.children(recursive=True)]
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes, timeout=30)
    run.wait()
