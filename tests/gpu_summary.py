"""The GPU tier's summary: each check's outcome, what it measured and, for a skipped one, why. Pure: no torch.

`tests/gpu/conftest.py` records into one `Summary` as the tier runs and rewrites its files after every check, so that
a run stopped at its time limit still leaves what it measured: `gpu-summary.json` and `gpu-figures.md` under $OUT
(the folder the device tool brings back). The GPU machine keeps no copy of the README, so the figures reach it from
here: `python tests/gpu_summary.py gpu-summary.json` writes them between the README's GPU-tier markers.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- gpu tier figures: written by tests/gpu_summary.py -->", "<!-- end of gpu tier figures -->"
JSON_NAME, FIGURES_NAME = "gpu-summary.json", "gpu-figures.md"
Figure = float | str  # an int is a float to a type checker


@dataclass
class Check:
    """One test of the tier: `outcome` is pytest's (passed, failed, skipped), `reason` a skip's or failure's cause."""

    name: str
    outcome: str = "running"
    reason: str = ""
    figures: dict[str, Figure] = field(default_factory=dict)
    report: str = ""


@dataclass
class Summary:
    """The whole run: where it ran (`environment`: device, torch, transformers...) and its checks in order."""

    date: str
    environment: dict[str, str] = field(default_factory=dict)
    checks: dict[str, Check] = field(default_factory=dict)
    seconds: float = 0.0

    def check(self, name: str) -> Check:
        return self.checks.setdefault(name, Check(name))

    def finish(self, name: str, outcome: str, reason: str = "") -> None:
        check = self.check(name)
        check.outcome, check.reason = outcome, reason

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Summary:
        data = json.loads(text)
        checks = {name: Check(**check) for name, check in data.pop("checks").items()}
        return cls(checks=checks, **data)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for check in self.checks.values():
            counts[check.outcome] = counts.get(check.outcome, 0) + 1
        return counts

    def text(self) -> str:
        """The table printed at the end of a run: one line per check, its figures and any benchmark report."""
        lines = [f"GPU tier, {self.date}, {self.seconds:.0f} s: " + _environment(self.environment)]
        for check in self.checks.values():
            lines.append(f"{check.outcome.upper():8} {check.name}" + (f": {check.reason}" if check.reason else ""))
            lines += [f"{'':9}{key} = {_figure(value)}" for key, value in check.figures.items()]
            lines += [f"{'':9}{line}" for line in check.report.splitlines()]
        return "\n".join(lines)

    def markdown(self) -> str:
        """The README's block: the date, where it ran, then each check with its figures (reports left out)."""
        counts = ", ".join(f"{count} {outcome}" for outcome, count in sorted(self.counts().items()))
        lines = [f"Last measured: {self.date} ({counts}, {self.seconds:.0f} s), {_environment(self.environment)}.", ""]
        for check in self.checks.values():
            figures = "; ".join(f"{key} {_figure(value)}" for key, value in check.figures.items())
            why = f" ({check.reason})" if check.reason else ""
            lines.append(f"- `{check.name}`: {check.outcome}{why}" + (f": {figures}" if figures else ""))
        return "\n".join(lines)

    def write(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / JSON_NAME).write_text(self.to_json(), encoding="utf-8")
        (directory / FIGURES_NAME).write_text(self.markdown() + "\n", encoding="utf-8")


def with_figures(readme: str, block: str) -> str:
    """`readme` with `block` between the GPU-tier markers; ValueError when the markers are missing."""
    pattern = re.escape(START) + r".*?" + re.escape(END)
    if not re.search(pattern, readme, flags=re.DOTALL):
        raise ValueError(f"the README has no GPU-tier markers ({START} ... {END})")
    return re.sub(pattern, lambda _: f"{START}\n{block}\n{END}", readme, flags=re.DOTALL)


def _environment(environment: dict[str, str]) -> str:
    return ", ".join(f"{key} {value}" for key, value in environment.items())


def _figure(value: Figure) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def main(argv: list[str]) -> None:
    """`python tests/gpu_summary.py SUMMARY.json`: write a run's figures into the README."""
    if len(argv) != 1:
        raise SystemExit("usage: python tests/gpu_summary.py gpu-summary.json (from a GPU tier run's $OUT)")
    summary = Summary.from_json(Path(argv[0]).read_text(encoding="utf-8"))
    README.write_text(with_figures(README.read_text(encoding="utf-8"), summary.markdown()), encoding="utf-8")
    print(f"README: GPU-tier figures of {summary.date} written")


if __name__ == "__main__":
    main(sys.argv[1:])
