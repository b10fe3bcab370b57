"""The reliability suite's figures: each test records what it held up to, and the session writes them into the
README's reliability section (between its markers) with the commit they were measured on, so that nobody types them
in."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = (
    "<!-- reliability figures: written by tests/test_reliability_*.py -->",
    "<!-- end of reliability figures -->",
)
FIGURES: dict[str, str] = {}
ORDER = ("fuzz", "load", "disconnects", "faults", "slow client", "logs")


def record(name: str, text: str) -> None:
    FIGURES[name] = text


def write_readme() -> None:
    """Replace the figures between the markers (only when every figure of the suite was recorded)."""
    if set(FIGURES) != set(ORDER):
        return
    lines = "\n".join([f"Measured on {measured_on()}:", *(f"- **{name}**: {FIGURES[name]}" for name in ORDER)])
    text = README.read_text(encoding="utf-8")
    block = f"{START}\n{lines}\n{END}"
    updated = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: block, text, flags=re.DOTALL)
    if updated != text:
        README.write_text(updated, encoding="utf-8")


def measured_on() -> str:
    """The checkout's commit, and whether files differed from it."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=README.parent, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "a checkout outside git"
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!README.md")
    return f"commit {commit}" + (" with local changes" if changed else "")
