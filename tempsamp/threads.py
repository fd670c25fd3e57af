"""How many intra-op threads torch uses on the CPU, chosen once per process and recorded.

torch's default is one thread per core of the machine in every process. On a machine shared with
other work (or with the other processes of a run), those threads wait for each other whenever one of
them is descheduled: each matrix product then lasts a scheduler time slice instead of microseconds.
benchmarks/bench_contention.py measures it on the demo (docs/decisions.md, "Threads").
"""

from __future__ import annotations

import os


def cores_available() -> int:
    """The cores this process may run on (its CPU affinity, which containers and schedulers set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def choose_threads(requested: int = 0) -> int:
    """``requested`` when > 0; else torch's current number (OMP_NUM_THREADS, or what the caller set)
    capped at the cores available divided among the processes of this machine (torchrun's
    LOCAL_WORLD_SIZE): never more threads than cores, never more than the caller asked for."""
    import torch

    if requested > 0:
        return requested
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, min(torch.get_num_threads(), cores_available() // max(1, local)))


def set_threads(requested: int = 0) -> int:
    """Set torch's intra-op threads (``choose_threads``) and return the number."""
    import torch

    threads = choose_threads(requested)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
