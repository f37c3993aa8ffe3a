"""The loader's model cache: the last loaded AltDiffusion model stays in memory, keyed by what is on disk.

ComfyUI keeps a node's outputs only while the node is in the running graph, so a workflow with another model in
between would otherwise read our 1.5 B parameters from disk again. The key holds each file's size and modification
time, so a file replaced or truncated on disk is read again, never served stale; a load that fails stores nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


def disk_signature(path: Path) -> str:
    """A short hash of the (relative path, size, mtime, ctime, inode) of ``path`` and, for a folder, every file in it.

    Changes when any file is added, removed, replaced, truncated or rewritten; costs one ``stat`` per file. The ctime
    and inode catch a file overwritten with one of the same size whose old mtime was put back (``cp -p``,
    ``touch -r``): the ctime can't be set back by a user.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    entries = [("", *_stat_key(path.stat()))]
    if path.is_dir():
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for name in sorted(filenames):
                file = Path(dirpath) / name
                try:
                    stat = file.stat()
                except FileNotFoundError:  # removed while we walk: the next call sees the new state
                    continue
                entries.append((file.relative_to(path).as_posix(), *_stat_key(stat)))
    return hashlib.sha256(repr(entries).encode()).hexdigest()[:16]


def _stat_key(stat: os.stat_result) -> tuple[int, int, int, int]:
    return stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino


class ModelCache(Generic[T]):
    """At most ``capacity`` loaded models, least recently used evicted first; safe to share between threads."""

    def __init__(self, capacity: int = 1):
        if capacity < 0:
            raise ValueError(f"capacity must be ≥ 0, got {capacity}")
        self.capacity = capacity
        self._entries: OrderedDict[Hashable, T] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_load(self, key: Hashable, load: Callable[[], T]) -> T:
        """The cached value for ``key``, else ``load()`` stored under it. Older entries are dropped *before* the
        load, so two models are never held at once beyond ``capacity``; an exception from ``load`` stores nothing."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                logger.debug("model cache hit: %s", key)
                return self._entries[key]
            while self._entries and len(self._entries) >= self.capacity:
                self._entries.popitem(last=False)
            value = load()
            if self.capacity:
                self._entries[key] = value
            return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
