"""CPU placement (`lmikit.server.placement`): which CPUs are free of pinned worker threads, and a real process moved
off the CPU its child is pinned to."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from lmikit.server.placement import free_cpus, keep_off_pinned_cpus, pinned_cpus

ALL = frozenset({0, 1, 2, 3})


def test_pinned_cpus_are_the_masks_narrower_than_the_process_own() -> None:
    assert pinned_cpus(ALL, [frozenset({0}), frozenset({1}), ALL]) == {0, 1}
    assert pinned_cpus(ALL, [ALL, ALL]) == frozenset()


def test_free_cpus_are_the_rest_and_none_when_nothing_or_everything_is_pinned() -> None:
    assert free_cpus(ALL, [frozenset({0}), ALL]) == {1, 2, 3}
    assert free_cpus(ALL, [ALL]) == frozenset()  # nothing pinned: leave the process where it is
    assert free_cpus(ALL, [frozenset({0, 1}), frozenset({2, 3})]) == frozenset()  # every CPU pinned


# A server with three threads whose child pins itself to the first CPU, as vLLM's CPU worker does.
SERVER = textwrap.dedent(
    """
    import os, subprocess, sys, threading
    first = min(os.sched_getaffinity(0))
    child = subprocess.Popen([sys.executable, "-c", f"import os, time; os.sched_setaffinity(0, {{{first}}}); "
                              "print('pinned', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    child.stdout.readline()
    for _ in range(2):
        threading.Thread(target=threading.Event().wait, daemon=True).start()
    print("ready", flush=True)
    sys.stdin.readline()
    child.kill()
    """
)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one CPU: there is nowhere to move a thread to")
def test_a_server_moves_off_the_cpu_its_child_is_pinned_to() -> None:
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline() == "ready\n"
        allowed = frozenset(os.sched_getaffinity(server.pid))
        what = keep_off_pinned_cpus(server.pid)
        threads = os.listdir(f"/proc/{server.pid}/task")
        masks = {frozenset(os.sched_getaffinity(int(tid))) for tid in threads}
        assert len(threads) == 3 and masks == {allowed - {min(allowed)}}
        assert what is not None and what.startswith("3 threads moved")
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(timeout=30)
