"""The loader's model cache: the last loaded AltDiffusion model stays in memory, keyed by what is on disk.

ComfyUI keeps a node's outputs only while the node is in the running graph, so a workflow with another model in
between would otherwise read our 1.5 B parameters from disk again. The key holds each file's size and modification
time, so a file replaced or truncated on disk is read again, never served stale; a load that fails stores nothing.

After each load (a switch of model) the C heap's free memory goes back to the system (``release_free_memory``): a
server alternating two models otherwise kept gigabytes of freed weights and load scratch resident.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import sys
import threading
import time
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


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (Linux), else None: musl, macOS and Windows have none, and nothing to trim this way."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


def release_free_memory() -> bool:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim(0)``); True when some were released.

    Why a model switch needs it: a model's weights are hundreds of tensors of 0.1–50 MB each, allocated one by one
    (a pickled ``.bin``, or any file cast to another dtype while it is read). glibc serves blocks above its mmap
    threshold with their own mappings, returned on free, but freeing such a block raises that threshold to its size
    (up to 32 MB), so from then on most weights land in glibc's heaps, which keep freed memory resident for
    reuse. A dropped model and a load's scratch (an fp32 ``.bin`` read whole, then cast to bf16) thus stayed resident:
    alternating m9 and m18 in one ComfyUI server, loaded as bf16 from fp32 files, held 2.7 GiB of free heap beside a
    1.6 GiB UNet (``bench/alternating_memory.py``). ``malloc_trim`` hands every whole free page back (``madvise``),
    from all of glibc's heaps, not just the top of the main one. A no-op where there is no ``malloc_trim``.
    """
    trim = _malloc_trim()  # looked up on first use: importing the pack loads no C library
    if trim is None:
        return False
    started = time.perf_counter()
    released = bool(trim(0))
    logger.debug("malloc_trim: %s in %.3f s", "memory released" if released else "nothing to release",
                 time.perf_counter() - started)  # fmt: skip
    return released


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
        load, so two models are never held at once beyond ``capacity``; an exception from ``load`` stores nothing.
        After a load, failed or not, the memory the dropped entries and the load's scratch left free in the C heap
        goes back to the system (``release_free_memory``)."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                logger.debug("model cache hit: %s", key)
                return self._entries[key]
            while self._entries and len(self._entries) >= self.capacity:
                self._entries.popitem(last=False)
            try:
                value = load()
            finally:
                release_free_memory()
            if self.capacity:
                self._entries[key] = value
            return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
        release_free_memory()

    def __len__(self) -> int:
        return len(self._entries)
