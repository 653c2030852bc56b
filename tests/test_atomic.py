"""Atomic writes: a failed writer leaves the old file or directory and no temporary behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from adept_components.atomic import (
    atomic_directory,
    atomic_write,
    atomic_writes,
    write_text_atomically,
)


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_write_creates_and_replaces_a_file(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    write_text_atomically(target, "first")
    assert target.read_text() == "first"
    atomic_write(target, lambda tmp: tmp.write_bytes(b"second"))
    assert target.read_bytes() == b"second"
    assert _names(tmp_path) == ["out.json"]


def test_the_writer_gets_a_hidden_sibling(tmp_path: Path) -> None:
    seen: list[Path] = []

    def write(tmp: Path) -> None:
        seen.append(tmp)
        tmp.write_text("x")

    atomic_write(tmp_path / "a.png", write)
    assert seen[0].parent == tmp_path and seen[0].name.startswith(".a.png.tmp-")


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old"
    assert _names(tmp_path) == ["out.json"]


def test_files_written_together_are_all_kept_when_one_fails(tmp_path: Path) -> None:
    first, second = tmp_path / "a.md", tmp_path / "b.png"
    first.write_text("old a")

    def fail(tmp: Path) -> None:
        tmp.write_text("partial")
        raise ValueError("cannot plot")

    with pytest.raises(ValueError, match="cannot plot"):
        atomic_writes({first: lambda tmp: tmp.write_text("new a"), second: fail})
    assert first.read_text() == "old a" and not second.exists()
    assert _names(tmp_path) == ["a.md"]
    atomic_writes({first: lambda t: t.write_text("new a"), second: lambda t: t.write_text("b")})
    assert (first.read_text(), second.read_text()) == ("new a", "b")


def test_directory_is_created_and_replaced(tmp_path: Path) -> None:
    target = tmp_path / "ckpt" / "final"  # the parent is created too
    with atomic_directory(target) as tmp:
        assert tmp.is_dir() and not any(tmp.iterdir()) and not target.exists()
        (tmp / "old.txt").write_text("1")
    assert _names(target) == ["old.txt"]
    with atomic_directory(target) as tmp:
        (tmp / "new.txt").write_text("2")
        assert (target / "old.txt").read_text() == "1"  # the old one until the body is done
    assert _names(target) == ["new.txt"]
    assert _names(tmp_path / "ckpt") == ["final"]


def test_failed_directory_keeps_the_old_one_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "final"
    with atomic_directory(target) as tmp:
        (tmp / "weights").write_text("good")
    with pytest.raises(RuntimeError, match="crashed"), atomic_directory(target) as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("crashed")
    assert (target / "weights").read_text() == "good"
    assert _names(tmp_path) == ["final"]
