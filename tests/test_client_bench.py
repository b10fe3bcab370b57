"""parser_bench runs end to end on a small body (the real run is `python -m lmikit.benchmarks.parser_bench`)."""

from __future__ import annotations

import pytest
from lmikit.benchmarks import parser_bench

pytestmark = pytest.mark.usefixtures("per_test_timeout")


def test_parser_bench_prints_throughput_and_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    parser_bench.main(["--mb", "0.05"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["jsonlines", "tgi-sse"]
    assert all("MB/s" in line and "time ratio" in line for line in lines)


def test_built_body_has_about_the_requested_size() -> None:
    body = parser_bench.build_body(parser_bench.recordings.tgi_sse, 100_000)
    assert 90_000 < len(body) < 110_000
