"""The DJL generation that drives the handler, and what the handler does differently for each.

The LMI 0.23.0 container and the newest one speak the same handler contract with different details (how a
rolling-batch item is encoded, what `rolling_batch=disable` means, which tensor-parallel rank answers, what `json`
means while rolling). The service detects the generation once from DJL's Output class; every other module asks
its `dialect` instead of comparing version strings. Pure: no torch, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class DjlGeneration(str, Enum):
    """The DJL Serving generation driving the handler (its value is the spelling `lmi serve --djl-version` takes)."""

    LMI_0_23 = "0.23"
    NEWEST = "newest"

    @classmethod
    def of_output(cls, output_cls: type) -> DjlGeneration:
        """The generation whose djl_python defines this Output class (only the newest has `binary_encode`)."""
        return cls.NEWEST if hasattr(output_cls, "binary_encode") else cls.LMI_0_23

    @property
    def dialect(self) -> HandlerDialect:
        return _DIALECTS[self]


@dataclass(frozen=True)
class HandlerDialect:
    """What differs between the generations on the handler's side of DJL's worker socket."""

    #: rolling-batch items are binary-encoded with their content type as a property (else JSON {"data", "last"})
    binary_items: bool
    #: `rolling_batch=disable` turns the rolling-batch loop off (0.23 rolls for any value)
    honours_rolling_disable: bool
    #: a tensor-parallel step is answered by the last rank's output, relayed to it (newest answers with rank 0's)
    last_rank_answers: bool
    #: the rolling batch streams a `json` body in pieces, so `json` is the default formatter while rolling
    rolling_streams_json: bool


_DIALECTS = {
    DjlGeneration.LMI_0_23: HandlerDialect(
        binary_items=False, honours_rolling_disable=False, last_rank_answers=True, rolling_streams_json=True
    ),
    DjlGeneration.NEWEST: HandlerDialect(
        binary_items=True, honours_rolling_disable=True, last_rank_answers=False, rolling_streams_json=False
    ),
}
