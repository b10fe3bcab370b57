"""GenerationGroup: one request answered by several rows of the batch (a list of `inputs`, OpenAI's `n` choices, DJL's
`n` and TGI's `best_of` sequences). Pure, like `generation`.

Each member is a `Generation` of its own, generated as its own row; the group's mailbox in the update hub receives all
their updates (the hub routes the members' ids to it), hands each member its own, and answers once they have all
finished: the members' answers composed in order (by default the JSON array of them, as DJL's non-streaming
handlers answer a batch; several sequences of one prompt: `formatters.sequences_answer`). A member that fails fails the request (its error alone is the answer; the others are
cancelled on release).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Callable, Union

from .engine import EngineUpdate
from .errors import HandlerError
from .generation import Generation
from .params import GenerationRequest


class GenerationGroup:
    """Several members answering one non-streaming request with one body."""

    content_type = "application/json"
    buffered = True
    needs_cancel = False  # what release cancels is named by `rows_to_cancel`

    def __init__(
        self, request_id: str, members: list[Generation], compose: Callable[[list[str]], str] | None = None
    ) -> None:
        self.request_id = request_id
        self.members = members
        self._compose = compose or _array
        self.request: GenerationRequest = members[0].request
        self._answers: dict[str, str] = {}
        self.error: HandlerError | None = None
        self._abandoned = False

    @property
    def member_ids(self) -> list[str]:
        return [member.request_id for member in self.members]

    @property
    def finished(self) -> bool:
        return self._abandoned or self.error is not None or all(member.finished for member in self.members)

    def absorb(self, updates: Iterable[EngineUpdate]) -> str:
        """'' until every member has finished, then the array of their answers (or the first failure alone)."""
        by_member: dict[str, list[EngineUpdate]] = {}
        for update in updates:
            by_member.setdefault(update.request_id, []).append(update)
        for member in self.members:
            if self.finished:
                break
            if member.request_id in self._answers:  # answered at an earlier step: absorbing again would empty it
                continue
            answer = member.absorb(by_member.get(member.request_id, ()))
            if member.error is not None:
                self.error = member.error
                return answer
            if member.finished:
                self._answers[member.request_id] = answer
        if self.error is None and self.finished and not self._abandoned:
            return self._compose([self._answers[member_id] for member_id in self.member_ids])
        return ""

    def abandon(self) -> None:
        """The client went away: every member still generating is cancelled on release."""
        self._abandoned = True
        for member in self.members:
            member.abandon()

    def rows_to_cancel(self) -> list[str]:
        """The engine rows that may still be generating."""
        return [row for member in self.members for row in member.rows_to_cancel()]

    def summary(self) -> str:
        return f"{self.request_id} ({len(self.members)} inputs): " + "; ".join(m.summary() for m in self.members)


def _array(answers: list[str]) -> str:
    return "[" + ",".join(answers) + "]"


#: what an adapter holds for one admitted request
Admitted = Union[Generation, GenerationGroup]
