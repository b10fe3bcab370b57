"""The portable engine's scheduler: FCFS admission within the slots and the prefill budget, cancellation, stop."""

from __future__ import annotations

from lmistream.engines.scheduler import QueuedRequest, Scheduler
from lmistream.params import GenerationParams


def _queued(request_id: str, tokens: int) -> QueuedRequest:
    return QueuedRequest(request_id, tuple(range(tokens)), GenerationParams(max_new_tokens=4), seed=1)


def _ids(plan) -> list[str]:
    return [a.request_id for a in plan.admit]


def test_admits_in_arrival_order_up_to_the_free_slots() -> None:
    scheduler = Scheduler(max_batch_size=2)
    for name in "abc":
        scheduler.submit(_queued(name, 3))
    assert _ids(scheduler.plan()) == ["a", "b"]
    assert _ids(scheduler.plan(timeout=0)) == []
    scheduler.finished(["a"])
    assert _ids(scheduler.plan()) == ["c"]


def test_the_prefill_budget_splits_admissions_but_never_starves_a_long_prompt() -> None:
    scheduler = Scheduler(max_batch_size=8, max_prefill_tokens=10)
    for name, tokens in (("a", 4), ("b", 5), ("c", 4), ("d", 30)):
        scheduler.submit(_queued(name, tokens))
    assert _ids(scheduler.plan()) == ["a", "b"]
    assert _ids(scheduler.plan()) == ["c"]
    assert _ids(scheduler.plan()) == ["d"]


def test_cancel_drops_a_waiting_request_and_plans_a_running_one_out_once() -> None:
    scheduler = Scheduler(max_batch_size=1)
    scheduler.submit(_queued("a", 2))
    scheduler.submit(_queued("b", 2))
    assert _ids(scheduler.plan()) == ["a"]
    scheduler.cancel("b")
    scheduler.cancel("a")
    scheduler.cancel("a")
    plan = scheduler.plan()
    assert plan.cancel == ("a",) and plan.admit == ()
    assert scheduler.running == 0
    assert scheduler.plan(timeout=0).empty


def test_stop_cancels_every_running_request() -> None:
    scheduler = Scheduler(max_batch_size=4)
    scheduler.submit(_queued("a", 2))
    scheduler.plan()
    scheduler.stop()
    plan = scheduler.plan()
    assert plan.stop and plan.cancel == ("a",)
