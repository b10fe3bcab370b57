"""A list of inputs as one GenerationGroup: each member gets its own updates through the group's one mailbox, the
answer is the array of the members' answers in order once all have finished, and one member's failure is the answer
alone while the rows still generating are cancelled on release."""

from __future__ import annotations

import json

from fakes import EOS, ByteTokenizer
from lmistream.engine import EngineUpdate
from lmistream.formatters import JsonNewest
from lmistream.generation import Generation
from lmistream.generation_group import GenerationGroup
from lmistream.hub import UpdateHub
from lmistream.params import GenerationParams, GenerationRequest

TOK = ByteTokenizer()


def group(size: int) -> tuple[GenerationGroup, UpdateHub]:
    request = GenerationRequest("p", GenerationParams(max_new_tokens=8), stream=False)
    members = [Generation(f"g.{i}", request, TOK, JsonNewest(), buffered=True) for i in range(size)]
    hub = UpdateHub()
    answer = GenerationGroup("g", members)
    hub.open("g", answer.member_ids)
    return answer, hub


def test_members_updates_reach_the_group_and_the_answer_is_their_array_in_order() -> None:
    answer, hub = group(2)
    hub.publish(EngineUpdate("g.1", (ord("B"), EOS), finished=True))
    assert answer.absorb(hub.take("g")) == "" and not answer.finished
    hub.publish(EngineUpdate("g.0", (ord("A"),)))
    hub.publish(EngineUpdate("g.0", (ord("a"), EOS), finished=True))
    body = answer.absorb(hub.take("g"))
    assert answer.finished and json.loads(body) == [{"generated_text": "Aa"}, {"generated_text": "B"}]
    assert answer.rows_to_cancel() == []


def test_one_members_failure_is_the_answer_and_the_others_are_cancelled() -> None:
    answer, hub = group(3)
    hub.publish(EngineUpdate("g.0", (ord("A"), EOS), finished=True))
    hub.publish(EngineUpdate("g.1", error="out of memory", code=507))
    body = answer.absorb(hub.take("g"))
    assert answer.finished and answer.error is not None and answer.error.status == 507
    assert json.loads(body) == {"code": 507, "error": "out of memory"}
    assert answer.rows_to_cancel() == ["g.2"]
    hub.close("g")
    hub.publish(EngineUpdate("g.2", (ord("C"),)))
    assert hub.take("g") == []
