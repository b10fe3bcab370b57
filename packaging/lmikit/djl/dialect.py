"""The DJL Serving generations the replay speaks, and what differs between them on the frontend's side.

`DjlVersion` names a generation as `lmi serve --djl-version` spells it: "0.23" follows the 0.23.0-dlc branch,
"newest" follows master. `DjlDialect` holds every behaviour the two differ in (request intake, the rolling-batch wire,
error shapes, how the Python engine loads and calls the handler), so the replay asks a dialect rather than comparing
version strings. The handler has its own view of the generations (`lmistream.dialect`): the two sides never import
each other, since the container has no lmikit and the replay runs any model.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum


class DjlVersion(str, Enum):
    """A DJL Serving generation; its value is the CLI spelling."""

    LMI_0_23 = "0.23"
    NEWEST = "newest"

    @property
    def dialect(self) -> DjlDialect:
        return _DIALECTS[self]


@dataclass(frozen=True)
class DjlDialect:
    """What one generation's Java frontend and Python engine do differently from the other's."""

    #: `rolling_batch=disable` turns the rolling-batch loop off (0.23 rolls for any value), and `async_mode` exists
    newest_modes: bool
    #: rolling-batch item keys: `batch_{index}.` in 0.23, zero-padded `batch_{index:03d}.` in the newest
    batch_prefix: str
    #: a request's properties are sent on every step (0.23), not only on its first
    properties_every_step: bool
    #: the data a request already started sends on later steps
    placeholder: bytes
    #: items come binary-encoded with `batch_<i>_` headers, and a failed batch sets each request's status
    binary_items: bool
    #: the rolling batch sets Content-Type from output_formatter when a request joins (0.23)
    rolling_content_type: bool
    #: every response is chunked, a buffered one included (0.23)
    always_chunked: bool
    #: the frontend adds a `requestId` property, refuses a per-request `handler` and skips a job cancelled in the queue
    request_tracking: bool
    #: Gson's Output carries a `cancelled` field
    output_cancelled_field: bool
    #: the Python engine loads model.py from its file path and forwards its `@output_formatter`/`@input_formatter`
    #: functions (0.23 runs a fresh `import model` and knows no decorated formatters)
    decorated_formatters: bool
    #: messages the Python engine also maps to 507 besides the OOM exception types
    oom_texts: tuple[str, ...]
    #: tensor-parallel: every step goes to all ranks and the last one answers (else only rank 0 gets a step)
    all_ranks_step: bool

    def key(self, index: int) -> str:
        """The prefix of a rolling-batch request's keys at this position of the batch."""
        return self.batch_prefix.format(index)


def derive_mode(version: DjlVersion, init_props: Mapping[str, str]) -> str:
    """The mode Java picks for these init properties: "rolling_batch", "async" or "plain"."""
    rolling = init_props.get("rolling_batch")
    if not DjlVersion(version).dialect.newest_modes:
        return "plain" if rolling is None else "rolling_batch"
    rolling_on = rolling is not None and rolling != "disable"
    async_on = str(init_props.get("async_mode", "")).lower() == "true"
    if rolling_on and async_on:
        raise ValueError(
            "rolling_batch and async_mode=true together are not a working DJL setup; "
            "set rolling_batch=disable for async mode"
        )
    if async_on:
        return "async"
    return "rolling_batch" if rolling_on else "plain"


_DIALECTS = {
    DjlVersion.LMI_0_23: DjlDialect(
        newest_modes=False,
        batch_prefix="batch_{}.",
        properties_every_step=True,
        placeholder=b'{"inputs": [""]}',
        binary_items=False,
        rolling_content_type=True,
        always_chunked=True,
        request_tracking=False,
        output_cancelled_field=False,
        decorated_formatters=False,
        oom_texts=(),
        all_ranks_step=True,
    ),
    DjlVersion.NEWEST: DjlDialect(
        newest_modes=True,
        batch_prefix="batch_{:03d}.",
        properties_every_step=False,
        placeholder=b"",
        binary_items=True,
        rolling_content_type=False,
        always_chunked=False,
        request_tracking=True,
        output_cancelled_field=True,
        decorated_formatters=True,
        oom_texts=("No available memory for the cache blocks", "CUDA error: out of memory"),
        all_ranks_step=False,
    ),
}
