"""DJL's init properties checked against the option table (`option_table`): the options an engine refuses, each
naming its key, the engine and the way out, and the keys nothing reads. The handler checks when it loads (`check`),
`lmi build` before it packs (`refusals`), and docs/djl-options.md is generated from the table (`markdown`). Pure: no
torch, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping

from .errors import ConfigError
from .option_table import ENGINES, TABLE, Option

#: the table's engines and entries are part of what `lmi build` reads here
__all__ = ["BY_KEY", "DJL_PROPERTIES", "ENGINES", "TABLE", "check", "markdown", "refusals", "unread"]

BY_KEY: dict[str, Option] = {option.key.lower(): option for option in TABLE}
#: init properties DJL itself adds beside the options
DJL_PROPERTIES = ("engine", "batch_size", "requestId")


def unread(props: Mapping[str, object], also_read: frozenset[str] = frozenset()) -> list[str]:
    """The keys of `props` that neither the table, DJL itself nor `also_read` (an engine's own) know."""
    known = set(BY_KEY) | {key.lower() for key in DJL_PROPERTIES} | set(also_read)
    return [str(key) for key in props if str(key).lower() not in known]


def refusals(props: Mapping[str, object], engine: str) -> list[ConfigError]:
    """An error for each option in `props` (DJL's init properties) that `engine` refuses (`auto`: that every
    engine refuses), naming the option as its field."""
    found = []
    for key, value in props.items():
        option = BY_KEY.get(str(key).lower())
        error = None if option is None else option.refusal(str(value), engine)
        if error is not None:
            found.append(error)
    return found


def check(props: Mapping[str, object], engine: str) -> None:
    """ConfigError naming every option `engine` refuses (the first one's key as the error's field)."""
    found = refusals(props, engine)
    if found:
        raise ConfigError("; ".join(error.message for error in found), param=found[0].param)


def markdown() -> str:
    """docs/djl-options.md: the table, one row per key."""
    lines = [
        "# DJL's LMI options and this handler",
        "",
        (
            "Generated from the table in `model/lmistream/option_table.py` (tests/test_options.py checks it). Each "
            "key is honoured by an engine or refused at `lmi build` and at load with a message naming the key, the "
            "engine and the way out; a neutral value (what the engines do anyway) is accepted everywhere. On the vLLM "
            "engine every other `option.*` that names a field of vLLM's engine arguments is passed through, as DJL "
            "does."
        ),
        "",
        "| option | DJL | " + " | ".join(ENGINES) + " | accepted everywhere |",
        "|---|---|" + "---|" * len(ENGINES) + "---|",
    ]
    for option in TABLE:
        engines = [option.how if engine in option.honoured else "refused: " + option.way_out for engine in ENGINES]
        neutral = ", ".join(f"`{value}`" for value in option.neutral)
        cells = [f"`option.{option.key}`", option.djl, *engines, neutral]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"
