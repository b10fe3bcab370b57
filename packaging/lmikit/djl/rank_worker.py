"""One tensor-parallel rank of `lmi serve`: model.py in its own process, answering the launcher's handle calls.

Started `mpirun -N <tp>`-style by `rank_group.RankGroup` (by mpirun itself where OpenMPI is installed). Like DJL's
`djl_python_engine.py` it copies `OMPI_COMM_WORLD_SIZE/RANK/LOCAL_RANK` into `WORLD_SIZE/RANK/LOCAL_RANK`, then
connects to the launcher's socket for its rank (`<socket>.<rank>`), loads the entry point with the model dir as cwd
and on sys.path, and serves calls until the launcher hangs up. Inputs and Outputs cross as plain data (`wire`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from multiprocessing.connection import Client

from lmikit.djl import wire
from lmikit.djl.dialect import DjlVersion
from lmikit.djl.loader import enter_model_environment, load_entry_point

AUTHKEY_ENV = "LMI_RANK_AUTHKEY"


def _rank_environment() -> int:
    """DJL's copy of the OpenMPI variables; returns this process's rank."""
    for name, openmpi in (("WORLD_SIZE", "SIZE"), ("RANK", "RANK"), ("LOCAL_RANK", "LOCAL_RANK")):
        value = os.environ.get(f"OMPI_COMM_WORLD_{openmpi}")
        if value is not None:
            os.environ[name] = value
    return int(os.environ.get("RANK", "0"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--entry-point", default="model.py")
    parser.add_argument("--handler", default="handle")
    parser.add_argument("--djl-version", choices=[version.value for version in DjlVersion], required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[rank %(process)d] %(levelname)s %(name)s: %(message)s")
    rank = _rank_environment()
    connection = Client(f"{args.socket}.{rank}", family="AF_UNIX", authkey=bytes.fromhex(os.environ[AUTHKEY_ENV]))
    connection.send(os.getpid())  # under mpirun the launcher knows only mpirun's own pid
    enter_model_environment(args.model_dir)
    entry = load_entry_point(args.model_dir, DjlVersion(args.djl_version), args.handler, args.entry_point)
    djl = sys.modules["djl_python"]
    while True:
        try:
            name, data = connection.recv()
        except EOFError:
            break
        inputs = wire.to_input(djl, data)
        for key, function in entry.formatters.items():
            inputs.properties.setdefault(key, function)
        try:
            output = getattr(entry.module, name)(inputs)
            connection.send(("output", None if output is None else wire.from_output(output)))
        except Exception as error:  # the launcher turns it into DJL's error output
            logging.getLogger(__name__).exception("handler failed on rank %d", rank)
            connection.send(("error", (type(error).__name__, str(error))))
    os._exit(0)  # as DJL ends its worker: engine threads must not keep the process alive


if __name__ == "__main__":
    main()
