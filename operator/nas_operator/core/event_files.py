"""Finding and opening a trial's event files in a directory the trial controls.

The trial writes its log directory, so it can put anything there: symlinks to another team's directory or to the
operator's own files, FIFOs named like event files (opening one for reading blocks until a writer comes, which is
never), millions of files, deep trees. So no symlink is ever followed (every path component is opened relative to
its parent with O_NOFOLLOW, which also closes the race of a directory swapped for a link after it was listed), only
regular files are read (checked on the open descriptor, opened with O_NONBLOCK so a FIFO swapped in cannot block),
and the walk stops at fixed bounds. Lightning nests event files under `<name>/version_<n>/`, hence a walk at all.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

EVENT_FILE_MARKER = "tfevents"

MAX_DEPTH = 6
"""Directory levels below the log dir that are searched: Lightning uses two (`lightning_logs/version_0`), a
hand-made layout rarely more; a deeper tree is a trial's own business, not worth the operator's time."""

MAX_ENTRIES = 10_000
"""Directory entries looked at per scan: a trial writing checkpoints and images next to its events stays far below
this, and a trial creating millions of files cannot make each step of the operator list them all."""

MAX_EVENT_FILES = 64
"""Event files read per trial: one per writer session (a restart, each Lightning version, add_scalars' sub-writers);
the reader keeps state per file, so this also bounds its memory."""

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0)


@dataclass(frozen=True)
class WalkLimits:
    max_depth: int = MAX_DEPTH
    max_entries: int = MAX_ENTRIES
    max_files: int = MAX_EVENT_FILES


@dataclass
class Found:
    """Event files under a log dir (paths relative to it, as name parts), and the bounds the search ran into."""

    files: list[tuple[str, ...]] = field(default_factory=list)
    bounds: list[str] = field(default_factory=list)
    root_problem: str = ""


def find_event_files(root: Path, limits: WalkLimits = WalkLimits()) -> Found:
    """Regular files named like event files under `root`, in sorted path order, without following any symlink."""
    found = Found()
    try:
        root_fd = os.open(root, _DIR_FLAGS)
    except OSError as exc:
        found.root_problem = _why(exc, root)
        return found
    budget = [limits.max_entries]
    try:
        _walk(root_fd, (), 0, limits, budget, found)
    finally:
        os.close(root_fd)
    return found


def _why(exc: OSError, path: Path) -> str:
    if exc.errno == errno.ENOENT:
        return f"{path} does not exist"
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return f"{path} is not a directory (a symlink or a file; links are not followed)"
    return f"{path} cannot be read: {exc.strerror}"


def _walk(fd: int, parts: tuple[str, ...], depth: int, limits: WalkLimits, budget: list[int], found: Found) -> None:
    """Depth first in name order; at most depth+1 directory descriptors are open at once."""
    files: list[str] = []
    subdirs: list[str] = []
    try:
        with os.scandir(fd) as entries:
            for entry in entries:
                if budget[0] <= 0:
                    _note(
                        found, f"more than {limits.max_entries} directory entries (MAX_ENTRIES): the rest not searched"
                    )
                    break
                budget[0] -= 1
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append(entry.name)
                elif EVENT_FILE_MARKER in entry.name and entry.is_file(follow_symlinks=False):
                    files.append(entry.name)
    except OSError:
        pass  # unreadable (or vanishing) directory: what was listed before the error is still used
    for name in sorted(files):
        if len(found.files) >= limits.max_files:
            _note(found, f"more than {limits.max_files} event files (MAX_EVENT_FILES): only the first are read")
            return
        found.files.append((*parts, name))
    for name in sorted(subdirs):
        if depth >= limits.max_depth:
            _note(found, f"directories deeper than {limits.max_depth} levels (MAX_DEPTH) not searched")
            return
        try:
            child = os.open(name, _DIR_FLAGS, dir_fd=fd)
        except OSError:
            continue  # swapped for a link or removed since it was listed
        try:
            _walk(child, (*parts, name), depth + 1, limits, budget, found)
        finally:
            os.close(child)
        if len(found.files) >= limits.max_files and any("MAX_EVENT_FILES" in b for b in found.bounds):
            return


def _note(found: Found, bound: str) -> None:
    if bound not in found.bounds:
        found.bounds.append(bound)


def open_regular(root: Path, parts: Sequence[str]) -> tuple[int, os.stat_result] | None:
    """A read descriptor and its stat for `root/parts...` if that is a regular file reached without any symlink.

    None when any component is a link, is missing, or the file is not regular (FIFO, socket, device): those are
    never read. The caller closes the descriptor.
    """
    fds: list[int] = []
    try:
        fds.append(os.open(root, _DIR_FLAGS))
        for name in parts[:-1]:
            fds.append(os.open(name, _DIR_FLAGS, dir_fd=fds[-1]))
        fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=fds[-1])
    except OSError:
        return None
    finally:
        for opened in fds:
            os.close(opened)
    try:
        info = os.fstat(fd)
    except OSError:
        os.close(fd)
        return None
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        return None
    return fd, info
