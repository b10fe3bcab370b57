"""The handler package runs unchanged on every stack: each module compiles on this interpreter (Python 3.9 in the LMI
0.23 tier), and only the engine modules import torch."""

from __future__ import annotations

import ast
import py_compile
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "model" / "lmistream"
MODULES = sorted(PACKAGE.rglob("*.py"))
TORCH_MODULES = {
    "continuous.py",
    "cb_processors.py",
    "constraints.py",
    "loading.py",
    "batch.py",
    "kv_headroom.py",
    "packed_attention.py",
    "sampling.py",
    "portable.py",
    "distributed.py",
    "ranked.py",
    "vllm_engine.py",
    "vllm_arguments.py",
    "lora.py",
    "prefix_cache.py",
}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_compiles_here(path: Path, tmp_path: Path) -> None:
    py_compile.compile(str(path), cfile=str(tmp_path / "out.pyc"), doraise=True)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_engine_modules_import_torch(path: Path) -> None:
    imported = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    heavy = imported & {"torch", "transformers"}
    if path.parent.name == "engines" and path.name in TORCH_MODULES:
        return
    assert not heavy, f"{path.name} imports {sorted(heavy)}: only the engine modules may"
