"""build_tarball: flat layout, byte-identical rebuilds, fixed metadata, and nothing secret or cached inside."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest
from lmikit.project.tarball import build_tarball
from project_factory import good_properties, make_project, write_properties

EXPECTED = [
    "lmistream",
    "lmistream/__init__.py",
    "lmistream/engine.py",
    "lmistream/formatters",
    "lmistream/formatters/__init__.py",
    "lmistream/formatters/jsonlines.py",
    "model.py",
    "requirements.txt",
    "serving.properties",
]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path)


def _names(archive: Path) -> list[str]:
    with tarfile.open(archive) as tar:
        return tar.getnames()


def test_layout_is_flat_and_sorted(project: Path, tmp_path: Path) -> None:
    report = build_tarball(project, tmp_path / "out" / "model.tar.gz")
    assert _names(report.path) == EXPECTED
    assert report.entries == EXPECTED
    assert report.size == report.path.stat().st_size


def test_contents_round_trip(project: Path, tmp_path: Path) -> None:
    report = build_tarball(project, tmp_path / "model.tar.gz")
    with tarfile.open(report.path) as tar:
        extracted = tar.extractfile("serving.properties").read()
    assert extracted == (project / "serving.properties").read_bytes()


def test_two_builds_are_byte_identical_even_after_touching_mtimes(project: Path, tmp_path: Path) -> None:
    first = build_tarball(project, tmp_path / "a.tar.gz").path.read_bytes()
    for path in project.rglob("*"):
        os.utime(path, (1_700_000_000, 1_700_000_000))
    second = build_tarball(project, tmp_path / "b.tar.gz").path.read_bytes()
    assert first == second


def test_metadata_is_fixed(project: Path, tmp_path: Path) -> None:
    archive = build_tarball(project, tmp_path / "model.tar.gz").path
    header = archive.read_bytes()[:10]
    assert header[4:8] == b"\0\0\0\0"  # gzip MTIME
    assert not header[3] & 0x08  # no FNAME field
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            assert (member.uid, member.gid, member.uname, member.gname, member.mtime) == (0, 0, "", "", 0)
            assert member.mode == (0o755 if member.isdir() else 0o644), member.name


def test_source_date_epoch_sets_member_mtimes(project: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    archive = build_tarball(project, tmp_path / "model.tar.gz").path
    with tarfile.open(archive) as tar:
        assert {member.mtime for member in tar.getmembers()} == {1_700_000_000}


def test_secrets_caches_and_build_outputs_stay_out(project: Path, tmp_path: Path) -> None:
    package = project / "model" / "lmistream"
    junk = [
        package / "__pycache__" / "engine.cpython-311.pyc",
        package / "stale.pyc",
        package / ".env",
        package / ".env.local",
        package / "server.pem",
        package / "private.key",
        package / ".aws" / "credentials",
        package / "aws_credentials.json",
        package / ".pytest_cache" / "v",
        package / ".mypy_cache" / "x",
        package / "dist" / "old.tar.gz",
        project / ".git" / "HEAD",
        project / ".env",
        project / "dist" / "x",
        project / ".venv" / "lib" / "__init__.py",
        project / "model" / ".venv" / "__init__.py",
    ]
    for path in junk:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("secret")
    report = build_tarball(project, tmp_path / "model.tar.gz")
    assert _names(report.path) == EXPECTED
    assert "lmistream/server.pem" in report.excluded


def test_symlinks_are_left_out(project: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("not ours")
    (project / "model" / "lmistream" / "link.txt").symlink_to(outside)
    report = build_tarball(project, tmp_path / "model.tar.gz")
    assert _names(report.path) == EXPECTED
    assert report.excluded == ["lmistream/link.txt"]


def test_custom_entry_point_file_ships_instead_of_model_py(project: Path, tmp_path: Path) -> None:
    (project / "model" / "model.py").rename(project / "model" / "handler.py")
    props = good_properties(tmp_path / "weights") | {"option.entryPoint": "handler.py"}
    write_properties(project, props)
    names = _names(build_tarball(project, tmp_path / "model.tar.gz").path)
    assert "handler.py" in names and "model.py" not in names


def test_flat_project_layout(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    for child in (project / "model").iterdir():
        child.rename(project / child.name)
    (project / "model").rmdir()
    assert _names(build_tarball(project, tmp_path / "model.tar.gz").path) == EXPECTED


@pytest.mark.parametrize("text", ["# nothing extra\nsentencepiece\n", ""])
def test_requirements_text_ships_instead_of_the_project_file(project: Path, tmp_path: Path, text: str) -> None:
    report = build_tarball(project, tmp_path / "a.tar.gz", requirements=text)
    assert report.entries == EXPECTED
    with tarfile.open(report.path) as tar:
        assert tar.extractfile("requirements.txt").read() == text.encode()
    assert (
        build_tarball(project, tmp_path / "b.tar.gz", requirements=text).path.read_bytes() == report.path.read_bytes()
    )


def test_requirements_text_ships_even_without_a_project_file(project: Path, tmp_path: Path) -> None:
    (project / "requirements.txt").unlink()
    assert "requirements.txt" not in _names(build_tarball(project, tmp_path / "a.tar.gz").path)
    assert "requirements.txt" in _names(build_tarball(project, tmp_path / "b.tar.gz", requirements="").path)
