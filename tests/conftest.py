"""Session hooks shared by the suite."""
from __future__ import annotations

import reliability_figures


def pytest_sessionfinish(session, exitstatus) -> None:
    """Write the reliability figures into the README once the whole suite of them passed."""
    if exitstatus == 0:
        reliability_figures.write_readme()
