"""A list of inputs as one GenerationGroup: each member gets its own updates through the group's one mailbox, the
answer is the array of the members' answers in order once all have finished, and one member's failure is the answer
alone while the rows still generating are cancelled on release. Several sequences of one request (DJL's `n`, TGI's
`best_of`) answer in DJL newest's shape."""

from __future__ import annotations

import json
from dataclasses import replace

from fakes import EOS, ByteTokenizer
from lmistream.engine import EngineUpdate
from lmistream.formatters import JsonNewest, SequenceJson, sequences_answer
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


def test_a_member_that_finished_at_an_earlier_step_keeps_its_answer() -> None:
    answer, hub = group(2)
    hub.publish(EngineUpdate("g.0", (ord("A"), EOS), finished=True))
    assert answer.absorb(hub.take("g")) == ""
    hub.publish(EngineUpdate("g.1", (ord("B"), EOS), finished=True))
    assert json.loads(answer.absorb(hub.take("g"))) == [{"generated_text": "A"}, {"generated_text": "B"}]


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


def sequences(likeliest: bool, tgi: bool) -> tuple[GenerationGroup, UpdateHub]:
    """Two sequences of one request, the first asking for the prompt's tokens (only its row computes them)."""
    params = GenerationParams(max_new_tokens=2, do_sample=True, logprobs=True)
    members = [
        Generation(
            f"s.{i}",
            GenerationRequest("p", replace(params, prompt_logprobs=i == 0), stream=False),
            TOK,
            SequenceJson(tgi, top_tokens=False),
            buffered=True,
        )
        for i in range(2)
    ]
    hub = UpdateHub()
    answer = GenerationGroup("s", members, lambda answers: sequences_answer(answers, "pq", likeliest, tgi))
    hub.open("s", answer.member_ids)
    hub.publish(
        EngineUpdate("s.0", (ord("A"), EOS), (-2.0, -1.0), prefill=((ord("p"), None), (ord("q"), -3.0)), finished=True)
    )
    hub.publish(EngineUpdate("s.1", (ord("B"), ord("b")), (-0.5, -0.25), finished=True))
    return answer, hub


def test_several_sequences_answer_in_djl_newests_shape_byte_for_byte() -> None:
    """DJL's `n`: the first sequence is the answer, the others are listed, each with its text; the prompt's tokens are
    in every sequence's details, after its own tokens."""
    answer, hub = sequences(likeliest=False, tgi=False)
    prefill = '"prefill": [{"id": 112, "text": "p", "log_prob": null}, {"id": 113, "text": "q", "log_prob": -3.0}]'
    assert answer.absorb(hub.take("s")) == (
        '{"generated_text": "A", "details": {"inputs": "pq", "finish_reason": "eos_token", "generated_tokens": 2, '
        '"tokens": [{"id": 65, "text": "A", "log_prob": -2.0}, {"id": 256, "text": "", "log_prob": -1.0, '
        f'"special_token": true}}], {prefill}, "best_of_sequences": [{{"finish_reason": "length", '
        '"generated_tokens": 2, "tokens": [{"id": 66, "text": "B", "log_prob": -0.5}, {"id": 98, "text": "b", '
        f'"log_prob": -0.25}}], {prefill}, "generated_text": "Bb"}}]}}}}'
    )


def test_best_of_answers_the_likeliest_sequence_in_tgis_token_fields_with_tgi_compat() -> None:
    answer, hub = sequences(likeliest=True, tgi=True)
    (body,) = json.loads(answer.absorb(hub.take("s")))
    assert body["generated_text"] == "Bb"  # total -0.75 against -3.0
    assert [token["logprob"] for token in body["details"]["tokens"]] == [-0.5, -0.25]
    assert body["details"]["prefill"][1] == {"id": 113, "text": "q", "logprob": -3.0}
    (other,) = body["details"]["best_of_sequences"]
    assert other["generated_text"] == "A" and other["tokens"][1] == {
        "id": 256,
        "text": "",
        "logprob": -1.0,
        "special": True,
    }
