"""CPU placement: keep a server's own threads off the CPUs its engine's worker processes are pinned to.

vLLM's CPU build pins each worker's OpenMP threads to CPUs of their own and leaves the rest for its scheduler and
the frontend, but nothing moves the frontend there: the server's HTTP, DJL-replay and engine-loop threads run
wherever Linux puts them, and each time one lands on a worker's CPU it stalls a decode step (what the move is
worth: docs/bench/vllm-profile.md). Which CPUs are pinned is read from the worker threads' own affinity
masks, so any engine that pins its workers gets the same treatment and any other is left alone
(`VLLM_CPU_OMP_THREADS_BIND=nobind` turns vLLM's pinning, and so this, off). Written here because no library moves
a process off CPUs its children claim; psutil lists the threads and `os.sched_setaffinity` moves them (Linux).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import psutil


def pinned_cpus(allowed: frozenset[int], masks: Iterable[frozenset[int]]) -> frozenset[int]:
    """The CPUs that threads are pinned to: the union of the masks narrower than `allowed`."""
    return frozenset().union(*(mask for mask in masks if mask < allowed))


def free_cpus(allowed: frozenset[int], masks: Iterable[frozenset[int]]) -> frozenset[int]:
    """The allowed CPUs no thread is pinned to; empty when nothing is pinned or the pinned threads take them all."""
    pinned = pinned_cpus(allowed, masks)
    return allowed - pinned if pinned else frozenset()


def keep_off_pinned_cpus(pid: int | None = None) -> str | None:
    """Move every thread of process `pid` (this one by default) off the CPUs its descendants' threads are pinned to;
    what it did, or None when there was nothing to do."""
    process = psutil.Process(pid)
    allowed = frozenset(os.sched_getaffinity(process.pid))
    free = free_cpus(allowed, thread_masks(process.children(recursive=True)))
    if not free:
        return None
    moved = sum(_move(thread.id, free) for thread in process.threads())
    pinned = sorted(allowed - free)
    return f"{moved} threads moved to CPUs {sorted(free)}, off CPUs {pinned} that the engine's workers are pinned to"


def thread_masks(processes: Iterable[psutil.Process]) -> list[frozenset[int]]:
    """The CPU affinity mask of every thread of these processes (those that end meanwhile are left out)."""
    masks = []
    for child in processes:
        try:
            threads = child.threads()
        except psutil.Error:  # it ended meanwhile
            continue
        for thread in threads:
            try:
                masks.append(frozenset(os.sched_getaffinity(thread.id)))
            except OSError:
                continue
    return masks


def _move(thread_id: int, cpus: frozenset[int]) -> bool:
    try:
        os.sched_setaffinity(thread_id, cpus)
    except OSError:  # the thread ended meanwhile
        return False
    return True
