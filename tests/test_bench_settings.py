"""`lmi bench` reads its command line once into typed settings and hands them to the workload `--workload` names;
the runs themselves are test_bench_cli's."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from lmikit.benchmarks import workloads
from lmikit.benchmarks.settings import BenchSettings, parse_levels
from lmikit.cli import main


def bench(monkeypatch: pytest.MonkeyPatch, *args: str) -> list[BenchSettings]:
    """The settings each compare workload (and the plain and structured runs) was handed by `lmi bench ARGS`."""
    handed: list[BenchSettings] = []
    for name in workloads.COMPARE_WORKLOADS:
        monkeypatch.setitem(workloads.COMPARE_WORKLOADS, name, lambda settings, _: handed.append(settings))
    monkeypatch.setattr(workloads, "run_endpoint", lambda settings, _: handed.append(settings))
    monkeypatch.setattr(workloads, "run_structured", lambda settings, _: handed.append(settings))
    result = CliRunner().invoke(main, ["bench", *args])
    assert result.exit_code == 0, result.output
    return handed


def test_a_compare_workload_gets_the_typed_settings_of_its_options(monkeypatch, tmp_path) -> None:
    args = ["--compare", "--workload", "chat", "--concurrency", "2,4", "--turns", "3", "--out", str(tmp_path)]
    monkeypatch.setenv("LMI_BENCH_VLLM_PYTHON", "/venv/bin/python")
    [settings] = bench(monkeypatch, *args, "--engines", "portable", "--no-naive")
    assert settings.compare and settings.workload == "chat" and settings.out == tmp_path
    assert settings.load.levels == (2, 4) and settings.load.max_new_tokens == 64 and settings.load.prompt_file is None
    assert (settings.chats.conversations, settings.chats.turns, settings.chats.system_tokens) == (16, 3, 1000)
    assert settings.systems.engines == ("portable",) and settings.systems.protocols == ("0.23", "newest")
    assert not settings.systems.naive and settings.systems.vllm_python == Path("/venv/bin/python")
    assert settings.command.startswith("lmi ")


def test_every_registered_workload_is_a_choice_of_workload(monkeypatch) -> None:
    for name in workloads.COMPARE_WORKLOADS:
        [settings] = bench(monkeypatch, "--compare", "--workload", name, "--adapters", "2", "--lora-rank", "4")
        assert settings.workload == name and (settings.adapters.count, settings.adapters.rank) == (2, 4)


def test_a_plain_run_and_structured_get_their_settings(monkeypatch) -> None:
    [plain] = bench(monkeypatch, "--url", "http://host:1", "--route", "openai-chat", "--model", "m")
    assert not plain.compare and not plain.structured
    assert (plain.endpoint.name, plain.endpoint.route, plain.endpoint.model) == ("http://host:1", "openai-chat", "m")
    [structured] = bench(monkeypatch, "--structured", "--model-id", "tiny", "--threads", "1")
    assert structured.structured and structured.systems.model_id == "tiny" and structured.systems.threads == 1


@pytest.mark.parametrize(("text", "levels"), [("1,8,32", (1, 8, 32)), ("4,", (4,)), (" 2 ", (2,))])
def test_levels(text: str, levels: tuple[int, ...]) -> None:
    assert parse_levels(text) == levels


@pytest.mark.parametrize("text", ["", "0", "1,x", "-1"])
def test_levels_refused(text: str) -> None:
    with pytest.raises(click.BadParameter, match="expected positive integers"):
        parse_levels(text)
