"""Session hooks shared by the suite."""

from __future__ import annotations

import os

import reliability_figures


def pytest_configure(config) -> None:
    """Tests never reach a model hub: every model they load is built locally (before any test module imports
    transformers, which reads this once)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_sessionfinish(session, exitstatus) -> None:
    """Write the reliability figures into the README once the whole suite of them passed."""
    if exitstatus == 0:
        reliability_figures.write_readme()
