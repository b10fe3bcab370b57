"""The chat workload's pure parts: each turn's messages extend the turn before, and the later-turn TTFT ratio is taken
repeat by repeat. (`lmi bench --compare --workload chat` itself runs in docs/bench, never timed here.)"""

from __future__ import annotations

from lmikit.benchmarks.chat_bench import REPLY, Replay, conversations, later_turn_ratios, messages
from lmikit.benchmarks.stats import RequestRecord


def test_each_turn_resends_the_system_prompt_and_the_whole_conversation_so_far() -> None:
    chats = conversations(3, 4)
    assert len(chats) == 3 and len({chat[0] for chat in chats}) == 3 and all(len(chat) == 4 for chat in chats)
    first, third = messages("SYS", chats[1], 0), messages("SYS", chats[1], 2)
    assert first == [{"role": "system", "content": "SYS"}, {"role": "user", "content": chats[1][0]}]
    assert third[: len(first)] == first and third[2] == {"role": "assistant", "content": REPLY}
    assert [m["role"] for m in third] == ["system", "user", "assistant", "user", "assistant", "user"]


def _replay(system: str, repeat: int, first_ms: float, later_ms: float) -> Replay:
    def one(ms: float) -> RequestRecord:
        return RequestRecord(0.0, [ms / 1000, ms / 1000 + 0.01])

    return Replay(system, 2, repeat, [[one(first_ms)] * 2, [one(later_ms)] * 2, [one(later_ms)] * 2])


def test_the_ratio_pairs_turns_two_and_later_of_the_same_repeat() -> None:
    replays = [
        _replay("lmi-cache-on", 0, 500, 100),
        _replay("lmi-cache-off", 0, 500, 400),
        _replay("lmi-cache-on", 1, 500, 300),
        _replay("lmi-cache-off", 1, 500, 400),
    ]
    [row] = later_turn_ratios(replays)
    assert row["concurrency"] == 2 and (row["low"], row["high"]) == (0.25, 0.75) and row["ratio"] == 0.5
    summary = replays[0].summary()
    assert summary["ttft_p50_ms_by_turn"] == [500, 100, 100] and summary["ttft_p50_ms_later_turns"] == 100


def test_the_stack_is_compared_with_vllm_where_vllm_ran_and_not_otherwise() -> None:
    replays = [_replay("lmi-cache-on", 0, 500, 120), _replay("lmi-cache-off", 0, 500, 400)]
    assert later_turn_ratios(replays, bottom="vllm") == []
    [row] = later_turn_ratios([*replays, _replay("vllm", 0, 500, 100)], bottom="vllm")
    assert (row["top"], row["bottom"], row["ratio"]) == ("lmi-cache-on", "vllm", 1.2)
