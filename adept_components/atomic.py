"""Atomic writes of files and directories: a reader sees the old version or the new, never half.

Every output of a run that a later step trusts (a checkpoint, a layer profile, a retention
report, a token cache entry) is written the same way: into a hidden temporary sibling of the
target, which is renamed onto the target only once it is complete. A sibling lives on the same
filesystem, so the rename is atomic (POSIX ``rename``); a crash or an exception leaves the
previous target and at most a hidden temporary that nothing reads, and an exception removes
even that. Temporary names carry the process id and a random tag, so two writers of one target
(two machines sharing a cache directory) never write into the same temporary.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Create or replace the file ``path`` through a temporary sibling.

    Args:
        path (Path): the file to write; its directory must exist.
        write (Callable[[Path], Any]): writes the complete content to the path it is given (a
            hidden sibling of ``path``), e.g. ``lambda tmp: fig.savefig(tmp, format="png")``.

    Raises:
        Exception: whatever ``write`` raises; ``path`` is then untouched and the temporary
            file removed.
    """
    atomic_writes({path: write})


def write_text_atomically(path: Path, text: str) -> None:
    """Create or replace the text file ``path`` (UTF-8) atomically.

    Args:
        path (Path): the file to write; its directory must exist.
        text (str): the whole content.
    """
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_writes(writers: Mapping[Path, Callable[[Path], Any]]) -> None:
    """Write several files, then rename them all into place (none, unless all were written).

    Files that belong together (a report's JSON, markdown and chart) then never disagree because
    one writer failed half way.

    Args:
        writers (Mapping[Path, Callable[[Path], Any]]): target file -> writer, as for
            ``atomic_write``; every target's directory must exist.

    Raises:
        Exception: whatever a writer raises; no target is then touched and every temporary file
            is removed.
    """
    tag = new_tag()
    staged: dict[Path, Path] = {}
    try:
        for path, write in writers.items():
            staged[path] = path.with_name(f".{path.name}.tmp-{tag}")
            write(staged[path])
            _sync(staged[path])
        for path, tmp in staged.items():
            os.replace(tmp, path)
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(target: Path, tag: str | None = None) -> Iterator[Path]:
    """A fresh hidden sibling directory to fill; on success it becomes ``target``.

    A previous ``target`` is moved aside, the new directory renamed into place and the old one
    deleted only then, so ``target`` is always either the old directory or the complete new
    one. If the body raises, the temporary directory is removed and ``target`` is untouched::

        with atomic_directory(output_dir / "step_100") as tmp:
            save_file(weights, str(tmp / "model.safetensors"))

    Args:
        target (Path): the directory to create or replace (its parent is created if missing).
        tag (str | None): the temporary's tag (``new_tag()``); default: a fresh one. Several
            processes filling one directory (every rank its shard) agree on the tag first and
            find the temporary with ``staging_directory(target, tag)``.

    Yields:
        Path: the empty temporary directory.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tag = tag or new_tag()
    tmp = staging_directory(target, tag)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.parent / f".{target.name}.old-{tag}"
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def recover_directories(parent: Path) -> list[str]:
    """Finish or undo what a crash inside ``atomic_directory`` left in ``parent``.

    A ``.NAME.tmp-*`` directory is a write that never completed: removed. A ``.NAME.old-*``
    directory is the previous ``NAME``, moved aside just before the new one was renamed in: if
    ``NAME`` exists the replacement completed and the old copy is removed; otherwise the crash
    fell between the two renames and the old copy is put back. Only directories of this
    module's naming pattern are touched.

    Args:
        parent (Path): the directory holding the checkpoints (nothing happens if it is absent).

    Returns:
        list[str]: one line per directory removed or restored.
    """
    done: list[str] = []
    if not parent.is_dir():
        return done
    for path in sorted(parent.iterdir()):
        match = _STAGED.fullmatch(path.name)
        if not match or not path.is_dir():
            continue
        target = parent / match["name"]
        if match["kind"] == "old" and not target.exists():
            path.rename(target)
            done.append(f"restored {target} from an interrupted replacement")
        else:
            shutil.rmtree(path, ignore_errors=True)
            done.append(f"removed {path} (left by an interrupted save)")
    return done


_STAGED = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old)-\d+-[0-9a-f]{8}")


def staging_directory(target: Path, tag: str) -> Path:
    """The temporary that ``atomic_directory(target, tag)`` fills (for the other writers)."""
    return target.parent / f".{target.name}.tmp-{tag}"


def new_tag() -> str:
    """A temporary-name tag unique to this process and call: ``<pid>-<8 hex digits>``."""
    return f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _sync(path: Path) -> None:
    """Flush ``path`` to disk, so that the renamed file is never an empty one after a power cut."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())
