"""RankGroup: `lmi serve`'s tensor-parallel ranks, started as DJL starts them and called through one entry point.

With `engine=MPI` (0.23 also `DeepSpeed`) and `option.tensor_parallel_degree=N`, DJL runs one `mpirun -N <N>` job
whose ranks each load model.py. Here that is mpirun from Debian's OpenMPI when it is on PATH, else N processes with
the same environment set by hand (RANK, WORLD_SIZE, LOCAL_RANK; MASTER_ADDR=127.0.0.1 and a free MASTER_PORT
either way). Each rank connects back to its own socket (`<dir>/rank.<rank>`, DJL's `.<rank>` suffix).

The frontend replay calls `RankGroup.entry` like a loaded model.py; each call goes where DJL sends it. LMI 0.23:
every call to every rank, and the last rank's Output answers. Newest LMI: the init call to every rank, requests to
rank 0 only ("passive workers"), and rank 0's Output answers. A rank that exits makes the group unhealthy at once:
the call in flight and every later call fail, and `/ping` answers 503.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, Listener
from pathlib import Path
from typing import Any

from lmikit.djl import standin, wire
from lmikit.djl.dialect import DjlVersion
from lmikit.djl.rank_worker import AUTHKEY_ENV
from lmikit.launch import free_port

logger = logging.getLogger(__name__)
POLL_S = 0.2
CONNECT_TIMEOUT_S = 120.0


class RankError(RuntimeError):
    """A rank exited or broke its connection; the group serves nothing more."""


@dataclass
class RankGroup:
    """N rank processes of one model, and the entry point that drives them."""

    degree: int
    model_dir: Path
    djl_version: DjlVersion
    handler: str = "handle"
    entry_point: str = "model.py"
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    launcher: str = "auto"  # "mpirun", "processes", or "auto": mpirun when it is on PATH

    def __post_init__(self) -> None:
        self.djl_version = DjlVersion(self.djl_version)
        self._djl = standin.install(self.djl_version)
        self._dir = tempfile.mkdtemp(prefix="lmi-ranks-")
        self._authkey = secrets.token_bytes(16)
        self._connections: list[Connection] = []
        self._processes: list[subprocess.Popen[bytes]] = []
        self.pids: list[int] = []
        self._lock = threading.Lock()
        self.failure: str | None = None
        if self.launcher == "auto":
            self.launcher = "mpirun" if shutil.which("mpirun") else "processes"

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Launch the ranks and wait until each has connected (they load model.py on the init call)."""
        listeners = [
            Listener(f"{self._dir}/rank.{r}", family="AF_UNIX", authkey=self._authkey) for r in range(self.degree)
        ]
        self._processes = self._launch()
        try:
            self._connections = [self._accept(listener, r) for r, listener in enumerate(listeners)]
            self.pids = [connection.recv() for connection in self._connections]
        finally:
            for listener in listeners:
                listener.close()
        threading.Thread(target=self._watch, name="lmi-rank-watch", daemon=True).start()

    def close(self) -> None:
        for connection in self._connections:
            connection.close()
        for process in self._processes:
            if process.poll() is None:
                process.terminate()
        for process in self._processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(self._dir, ignore_errors=True)

    @property
    def healthy(self) -> bool:
        return self.failure is None

    # -- the entry point the frontend calls ------------------------------------------------------------------------
    @property
    def entry(self) -> Any:
        return _GroupEntry(self)

    def call(self, name: str, inputs: Any) -> Any:
        """One handler call, sent and answered as DJL does for this version."""
        data = wire.from_input(inputs)
        init = not data["content"]
        targets = list(range(self.degree)) if (self.djl_version.dialect.all_ranks_step or init) else [0]
        with self._lock:
            self._check()
            for rank in targets:
                self._send(rank, (name, data))
            replies = [self._receive(rank) for rank in targets]
        kind, payload = replies[-1]
        if kind == "error":
            error_type, message = payload
            raise type(error_type, (RuntimeError,), {})(message)
        return None if payload is None else wire.to_output(self._djl, payload)

    # -- helpers ---------------------------------------------------------------------------------------------------
    def _launch(self) -> list[subprocess.Popen[bytes]]:
        env = {
            **self.env,
            AUTHKEY_ENV: self._authkey.hex(),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port()),
            "PYTHONPATH": _pythonpath(self.env),
        }
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.degree)))
        command = [
            sys.executable,
            "-m",
            "lmikit.djl.rank_worker",
            "--socket",
            f"{self._dir}/rank",
            "--model-dir",
            str(self.model_dir),
            "--entry-point",
            self.entry_point,
            "--handler",
            self.handler,
            "--djl-version",
            self.djl_version.value,
        ]
        if self.launcher == "mpirun":
            exported = [
                arg
                for key in (AUTHKEY_ENV, "MASTER_ADDR", "MASTER_PORT", "PYTHONPATH", "OMP_NUM_THREADS")
                for arg in ("-x", key)
            ]
            return [
                subprocess.Popen(
                    ["mpirun", "-N", str(self.degree), "--allow-run-as-root", "--oversubscribe", *exported, *command],
                    env=env,
                )
            ]
        ranks = {"WORLD_SIZE": str(self.degree)}
        return [
            subprocess.Popen(command, env={**env, **ranks, "RANK": str(r), "LOCAL_RANK": str(r)})
            for r in range(self.degree)
        ]

    def _accept(self, listener: Listener, rank: int) -> Connection:
        accepted: list[Connection] = []
        thread = threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True)
        thread.start()
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while thread.is_alive() and time.monotonic() < deadline:
            exited = self._exited()
            if exited:
                raise RankError(f"rank processes exited before connecting: {exited}")
            thread.join(POLL_S)
        if not accepted:
            raise RankError(f"rank {rank} did not connect within {CONNECT_TIMEOUT_S:.0f} s")
        return accepted[0]

    def _exited(self) -> str | None:
        """Which launched process ended (mpirun ends its job when one of its ranks dies)."""
        names = ["mpirun"] if self.launcher == "mpirun" else [f"rank {r}" for r in range(self.degree)]
        dead = [
            f"{name} exited with code {process.poll()}"
            for name, process in zip(names, self._processes)
            if process.poll() is not None
        ]
        return ", ".join(dead) or None

    def _watch(self) -> None:
        """Mark the group failed as soon as a rank process exits, and wake any call waiting on it."""
        while self.failure is None:
            exited = self._exited()
            if exited:
                self._fail(exited)
                return
            time.sleep(POLL_S)

    def _fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
            logger.error("tensor-parallel group failed: %s", reason)

    def _check(self) -> None:
        if self.failure is not None:
            raise RankError(f"a tensor-parallel rank failed: {self.failure}")

    def _send(self, rank: int, message: Any) -> None:
        try:
            self._connections[rank].send(message)
        except (OSError, ValueError) as error:
            self._fail(f"rank {rank} connection broke ({error})")
            self._check()

    def _receive(self, rank: int) -> Any:
        connection = self._connections[rank]
        while True:
            try:
                if connection.poll(POLL_S):
                    return connection.recv()
            except (EOFError, OSError) as error:
                self._fail(f"rank {rank} connection broke ({error or 'closed'})")
            self._check()


class _GroupEntry:
    """Quacks like `loader.EntryPoint` for the frontend: `module.<handler>(inputs)` calls the group."""

    def __init__(self, group: RankGroup) -> None:
        self.group = group
        self.model_dir = str(group.model_dir)
        self.handler_name = group.handler
        self.formatters: dict[str, Callable[..., Any]] = {}  # each rank injects its own model.py's
        self.module = _GroupModule(group)

    @property
    def healthy(self) -> bool:
        return self.group.healthy


class _GroupModule:
    def __init__(self, group: RankGroup) -> None:
        self._group = group

    def __getattr__(self, name: str) -> Callable[[Any], Any]:
        return lambda inputs: self._group.call(name, inputs)


def _pythonpath(env: dict[str, str]) -> str:
    """lmikit's own directory first, so that every rank can import `lmikit.djl.rank_worker`."""
    here = str(Path(__file__).resolve().parents[2])
    return os.pathsep.join(p for p in (here, env.get("PYTHONPATH", "")) if p)
