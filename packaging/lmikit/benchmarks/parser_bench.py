"""`python -m lmikit.benchmarks.parser_bench`: client parse throughput per format, and a linearity check.

Builds a recorded body (newest LMI jsonlines, TGI SSE) of `--mb` megabytes from a vocabulary with
multi-byte characters, cuts it into PayloadPart-sized pieces (16-256 bytes, cutting lines and characters),
and times `Stream(parts).text()`, format detection included. The same is timed on a body a tenth the size;
a parser that is linear in the input shows a time ratio near 10.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable, Sequence

from lmikit.benchmarks import recordings
from lmikit.client import Stream

_VOCABULARY = (" the", " a", " model", " é", "日本", " 🙂", ",", "\n", ' "quoted"', " stream")
_FORMATS: dict[str, Callable[[Sequence[str]], bytes]] = {
    "jsonlines": recordings.lmi_jsonlines,
    "tgi-sse": recordings.tgi_sse,
}


def build_body(render: Callable[[Sequence[str]], bytes], size: int) -> bytes:
    """A body of about `size` bytes, rendered from a repeating token sequence."""
    sample = 1000
    per_token = len(render([_VOCABULARY[i % len(_VOCABULARY)] for i in range(sample)])) / sample
    count = max(1, round(size / per_token))
    return render([_VOCABULARY[i % len(_VOCABULARY)] for i in range(count)])


def cut(body: bytes, rng: random.Random) -> list[bytes]:
    """Pieces of 16-256 bytes, the size range of PayloadParts carrying one to a few tokens."""
    offsets, position = [], 0
    while position < len(body):
        position += rng.randint(16, 256)
        offsets.append(min(position, len(body)))
    return recordings.split(body, offsets)


def time_parse(parts: list[bytes]) -> float:
    """Seconds to parse the parts into the full text."""
    start = time.perf_counter()
    Stream(parts).text()
    return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=10.0, help="size of the large body in MB (default 10)")
    size = int(parser.parse_args(argv).mb * 1_000_000)
    rng = random.Random(0)
    for name, render in _FORMATS.items():
        large, small = cut(build_body(render, size), rng), cut(build_body(render, size // 10), rng)
        large_bytes = sum(map(len, large))
        large_time, small_time = time_parse(large), time_parse(small)
        print(
            f"{name:10} {large_bytes / 1e6:6.2f} MB in {len(large)} parts: {large_time:.3f} s,"
            f" {large_bytes / 1e6 / large_time:6.1f} MB/s; time ratio {size / 1e6:g} MB / {size / 1e7:g} MB"
            f" = {large_time / small_time:.1f} (linear: ~10)"
        )


if __name__ == "__main__":
    main()
