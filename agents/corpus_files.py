"""Which files of a corpus folder Athena indexes: text documents, bounded in number and size, found by a bounded walk.

A corpus folder is whatever the config names, so the walk holds to limits whatever is in it: at
most :data:`MAX_FILES` documents (the first in path order), none over :data:`MAX_FILE_BYTES`, and
at most :data:`MAX_ENTRIES` directory entries looked at. Hidden files and folders are left out.
Each file skipped is logged once (again only if it changes), not on every pass.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MAX_FILES", "MAX_FILE_BYTES", "SUFFIXES", "FileStat", "Scanner", "read_bounded"]

log = logging.getLogger(__name__)

#: The kinds of file indexed: Markdown (a section per heading) and plain text (one section).
SUFFIXES = frozenset({".md", ".markdown", ".txt"})
MAX_FILE_BYTES = 1 << 20
MAX_FILES = 2000
#: Directory entries a walk looks at, at most: a corpus pointed at a huge tree still scans quickly.
MAX_ENTRIES = 50_000


@dataclass(frozen=True, slots=True)
class FileStat:
    """A document found in the corpus: its path relative to the folder (``/``-separated), size and mtime."""

    relative: str
    path: Path
    size: int
    mtime_ns: int


class Scanner:
    """Lists a folder's documents within the bounds, remembering what it has already said it skipped."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._said: set[tuple[str, int]] = set()
        self._said_too_many = False

    def scan(self) -> list[FileStat]:
        """The documents of the folder in path order (none if it is missing)."""
        found: list[FileStat] = []
        entries = 0
        for top, dirs, files in os.walk(self.folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            entries += len(dirs) + len(files)
            for name in sorted(files):
                if name.startswith(".") or Path(name).suffix.lower() not in SUFFIXES:
                    continue
                stat = self._stat(Path(top, name))
                if stat is not None:
                    found.append(stat)
                if len(found) > MAX_FILES:
                    return self._too_many(found)
            if entries > MAX_ENTRIES:
                self._say_too_many(f"more than {MAX_ENTRIES} entries", "the documents among the first")
                break
        return found

    def _stat(self, path: Path) -> FileStat | None:
        try:
            info = path.stat()  # a symlink's target: the corpus may link the project's own docs in
        except OSError:
            return None  # gone since it was listed, or a dangling link
        relative = path.relative_to(self.folder).as_posix()
        if not path.is_file():
            return None
        if info.st_size > MAX_FILE_BYTES:
            if (relative, info.st_size) not in self._said:
                self._said.add((relative, info.st_size))
                log.warning("athena: skipping %s (%d bytes, over %d)", path, info.st_size, MAX_FILE_BYTES)
            return None
        return FileStat(relative, path, info.st_size, info.st_mtime_ns)

    def _too_many(self, found: list[FileStat]) -> list[FileStat]:
        self._say_too_many(f"more than {MAX_FILES} documents", f"the first {MAX_FILES}")
        return found[:MAX_FILES]

    def _say_too_many(self, why: str, kept: str) -> None:
        if not self._said_too_many:
            self._said_too_many = True
            log.warning("athena: corpus %s has %s: indexing %s, in path order", self.folder, why, kept)


def read_bounded(path: Path) -> bytes | None:
    """The file's bytes, or None when it cannot be read or grew past the size bound since it was listed."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError:
        return None
    return data if len(data) <= MAX_FILE_BYTES else None
