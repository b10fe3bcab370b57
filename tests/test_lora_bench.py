"""The mixed-adapter benchmark's pure parts: streams dealt evenly over the adapters, and the ratios it prints (the
whole run starts servers and is run by hand: `python -m lmikit.benchmarks.lora_bench`)."""

from __future__ import annotations

from collections import Counter

from lmikit.benchmarks.lora_bench import RoundRobin, ratios
from lmikit.benchmarks.stats import LevelResult, RequestRecord
from lmikit.benchmarks.targets import closed_loop


class Named:
    """A target that records which adapter each request went to."""

    def __init__(self, name: str, seen: Counter) -> None:
        self._name, self._seen = name, seen

    def request(self, prompt: str, max_new_tokens: int) -> RequestRecord:
        self._seen[self._name] += 1
        return RequestRecord(0.0, [1.0] * max_new_tokens)


def test_32_streams_are_dealt_8_to_each_of_4_adapters() -> None:
    seen: Counter = Counter()
    mixed = RoundRobin([Named(f"adapter-{i}", seen) for i in range(4)])
    records = closed_loop(mixed, ["a prompt"], 32, 1, 2)
    assert len(records) == 32 and seen == {f"adapter-{i}": 8 for i in range(4)}


def _level(system: str, tok_s: float, repeat: int) -> LevelResult:
    return LevelResult(system, 32, 32, 0, 1024, 1.0, tok_s, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, repeat)


def test_each_system_gets_mixed_over_base_and_the_others_mixed_over_the_first() -> None:
    results = [
        _level("lmi base", 100.0, 0),
        _level("lmi mixed", 90.0, 0),
        _level("vllm base", 200.0, 0),
        _level("vllm mixed", 120.0, 0),
    ]
    found = {(r.top, r.bottom): round(r.best, 2) for r in ratios(results, ["lmi", "vllm"], [32])}
    assert found == {
        ("lmi mixed", "lmi base"): 0.9,
        ("vllm mixed", "vllm base"): 0.6,
        ("vllm mixed", "lmi mixed"): 1.33,
    }
