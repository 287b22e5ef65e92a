"""The teacher cache's store: one memory-mapped file of teacher targets per cache key (C8).

Layout of a store directory `<root>/<name>/`:

    header.json  the key, the per-image target shapes, the dtype, the entry count (checked on open)
    data.bin     num_images x views x width values (`dtype`), row = image * views + view
    flags.bin    one byte per (image, view): 0 empty, 1 filled (written after the entry's data)
    claims.bin   per (image, view): when and by which process id it was claimed (0: unclaimed)
(claims are taken under one file lock per root, `<root>/.claims.lock`, for this store and its
siblings together: concurrent trials never compute the same entry)

An entry is filled once and then only read: a process claims the entries its batch misses (a chunk
at a time), computes them, writes the values and then the flags; a process that finds an entry claimed by another waits
for its flag instead of computing it (a claim whose process is gone, or older than CLAIM_TIMEOUT_S,
is taken over: a run killed mid-batch and resumed does not wait for its own dead claims). Values are always returned as stored, whoever computed them.

A directory whose header does not match the key, or whose files have the wrong size (truncated), is
rebuilt, never used. Files are allocated in full up front (posix_fallocate), so a full disk is an
error at open (the run then uses the live teacher), not a crash while writing a mapped page; a
store that would leave less than 2 GB or 5 % of the disk free is not created either.
Memory-mapped files are coherent between the processes of one machine; on several machines share a
store only on a filesystem that gives that (catkd keeps stores node-local by default).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
from filelock import FileLock

FORMAT_VERSION = 1
CLAIM_TIMEOUT_S = 120.0  # a claim older than this is from a process that died: take it over
_POLL_S = 0.002
CLAIM_CHUNKS, CLAIM_CHUNK_MIN = 4, 8  # a batch's misses are claimed in (at most) 4 chunks of >= 8 rows
FREE_MARGIN_BYTES, FREE_MARGIN_SHARE = 2e9, 0.05  # a new store leaves at least this much of the disk free
_CLAIM = np.dtype([("t", "<f8"), ("pid", "<i8")])


class StoreError(RuntimeError):
    """The store cannot be created or opened (no space, unwritable directory)."""


@dataclass(frozen=True)
class Layout:
    num_images: int
    views: int
    fields: tuple[tuple[str, tuple[int, ...]], ...]  # (name, per-image shape), in storage order
    dtype: str  # numpy dtype name of the stored values

    @property
    def width(self) -> int:
        return sum(math.prod(shape) for _, shape in self.fields)

    @property
    def entries(self) -> int:
        return self.num_images * self.views

    @property
    def data_bytes(self) -> int:
        return self.entries * self.width * np.dtype(self.dtype).itemsize

    @property
    def total_bytes(self) -> int:
        return self.data_bytes + self.entries * (1 + _CLAIM.itemsize)

    def describe(self) -> dict[str, Any]:
        return {"num_images": self.num_images, "views": self.views, "dtype": self.dtype,
                "fields": [[n, list(s)] for n, s in self.fields], "width": self.width}

    @classmethod
    def from_describe(cls, d: dict[str, Any]) -> "Layout":
        return cls(int(d["num_images"]), int(d["views"]), tuple((n, tuple(s)) for n, s in d["fields"]), d["dtype"])


def _lock(path: Path) -> FileLock:
    """An exclusive lock across the processes of a machine, released when its holder dies: an OS lock
    (flock), never a lock file that a killed process would leave behind; polled as often as claims."""
    return FileLock(path, fallback_to_soft=False, poll_interval=_POLL_S)


def _allocate(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        if size == 0:
            return
        try:
            os.posix_fallocate(f.fileno(), 0, size)
        except OSError as e:
            if e.errno in (getattr(os, "EOPNOTSUPP", 95), 95, 22):  # filesystem without fallocate
                f.truncate(size)
            else:
                raise


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TeacherStore:
    """Open (creating or rebuilding as needed) the store for `key` under `root`."""

    def __init__(self, root: Path, name: str, key: dict[str, Any], layout: Layout,
                 log: Callable[[str], None] = print):
        self.root, self.dir, self.layout, self.log = Path(root), Path(root) / name, layout, log
        self.header = {"format": FORMAT_VERSION, "key": key, "layout": layout.describe()}
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with _lock(self.root / ".lock"):
                problem = self._check()
                if problem is not None:
                    if self.dir.exists():
                        log(f"teacher cache: {self.dir} {problem}: rebuilding it")
                        shutil.rmtree(self.dir)
                    self._create()
        except OSError as e:
            raise StoreError(f"cannot create the teacher cache at {self.dir}: {e.strerror or e}") from None
        self._open()

    # ---- files ---------------------------------------------------------------------------
    def _check(self) -> str | None:
        """None if the directory holds a complete store for this key, else what is wrong."""
        if not self.dir.is_dir():
            return "is missing"
        try:
            header = json.loads((self.dir / "header.json").read_text())
        except (OSError, ValueError):
            return "has no readable header"
        if header != json.loads(json.dumps(self.header)):
            return "has a header that does not match its key"
        sizes = {"data.bin": self.layout.data_bytes, "flags.bin": self.layout.entries,
                 "claims.bin": self.layout.entries * _CLAIM.itemsize}
        for fname, size in sizes.items():
            p = self.dir / fname
            if not p.is_file() or p.stat().st_size != size:
                return f"has a truncated or missing {fname}"
        return None

    def _create(self) -> None:
        st = os.statvfs(self.root)
        free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
        keep = max(FREE_MARGIN_BYTES, FREE_MARGIN_SHARE * total)  # room for checkpoints and results
        if self.layout.total_bytes > free - keep:
            raise StoreError(f"{self.layout.total_bytes / 1e9:.1f} GB would leave less than {keep / 1e9:.1f} GB "
                             f"free on {self.root} ({free / 1e9:.1f} GB free)")
        tmp = self.root / f".{self.dir.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            _allocate(tmp / "data.bin", self.layout.data_bytes)
            _allocate(tmp / "flags.bin", self.layout.entries)
            _allocate(tmp / "claims.bin", self.layout.entries * _CLAIM.itemsize)
            (tmp / "header.json").write_text(json.dumps(self.header, indent=1, sort_keys=True))
            os.rename(tmp, self.dir)  # complete or absent
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _open(self) -> None:
        L = self.layout
        shape = (L.entries, L.width)
        self.data = np.memmap(self.dir / "data.bin", dtype=L.dtype, mode="r+", shape=shape) if L.entries else \
            np.zeros(shape, L.dtype)
        self.flags = np.memmap(self.dir / "flags.bin", dtype=np.uint8, mode="r+", shape=(L.entries,))
        self.claims = np.memmap(self.dir / "claims.bin", dtype=_CLAIM, mode="r+", shape=(L.entries,))
        self._claims_lock = _lock(self.root / ".claims.lock")  # one for all stores of the root: see fetch

    # ---- entries -------------------------------------------------------------------------
    def rows(self, index: np.ndarray, view: np.ndarray) -> np.ndarray:
        index, view = np.asarray(index, dtype=np.int64), np.asarray(view, dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= self.layout.num_images
                           or view.min() < 0 or view.max() >= self.layout.views):
            raise IndexError("teacher cache: (image, view) outside the store")
        return index * self.layout.views + view

    def filled(self) -> int:
        return int(np.count_nonzero(self.flags))

    def _free(self, rows: np.ndarray, now: float) -> np.ndarray:
        """Mask of `rows` neither filled nor claimed by a live process (call under the claims lock)."""
        c = self.claims[rows]
        empty = self.flags[rows] == 0
        free = empty & ((c["t"] == 0) | (now - c["t"] > CLAIM_TIMEOUT_S))
        other = empty & ~free
        if other.any():  # claims of processes that are gone (killed mid-batch) are free
            for pid in np.unique(c["pid"][other]):
                if not _alive(int(pid)):
                    free |= other & (c["pid"] == pid)
        return free

    def _claim(self, rows: np.ndarray, siblings: Sequence["TeacherStore"] = (),
               limit: Optional[int] = None) -> tuple[np.ndarray, list[np.ndarray]]:
        """Claim up to `limit` free rows of this store and, among those, the free rows of each sibling
        (stores of other target specs of the same teacher and data, filled from the same forward)."""
        with self._claims_lock:
            now, pid = time.time(), os.getpid()
            mine = rows[self._free(rows, now)][:limit]
            self.claims[mine] = (now, pid)
            theirs = []
            for sib in siblings:
                r = mine[sib._free(mine, now)] if mine.size else mine
                sib.claims[r] = (now, pid)
                theirs.append(r)
        return mine, theirs

    def _write(self, rows: np.ndarray, values: np.ndarray) -> None:
        self.data[rows] = values.astype(self.layout.dtype, copy=False)
        self.flags[rows] = 1  # after the data: a reader that sees the flag sees the values

    def _release(self, rows: np.ndarray) -> None:
        self.claims[rows[self.flags[rows] == 0]] = (0.0, 0)

    def fetch(self, rows: np.ndarray, compute: Callable[..., Any],
              siblings: Sequence["TeacherStore"] = (), wait: bool = True) -> tuple[Optional[np.ndarray], int]:
        """The stored values of `rows` (len(rows) x width), computing the missing ones.

        compute(positions, sibling_positions) gets positions into `rows` of the entries to compute
        for this store and, per sibling, the positions (a subset) to fill there too; it returns
        (values len x width, [values per sibling]). Returns (values as stored, entries computed).
        wait=False (the prefetcher): compute the free entries only, never wait for another
        process's claims, and return no values."""
        where = {int(r): i for i, r in enumerate(rows)}
        # claimed a chunk at a time: a trial that arrives while another fills the batch takes the
        # chunks still free and computes them in parallel, instead of waiting for all of them
        chunk = max(CLAIM_CHUNK_MIN, -(-len(rows) // CLAIM_CHUNKS))
        pos = lambda rs: np.fromiter((where[int(r)] for r in rs), np.int64, len(rs))  # noqa: E731
        missing = rows[self.flags[rows] == 0]
        done = 0
        while missing.size:
            mine, theirs = self._claim(missing, siblings, chunk)
            if mine.size:
                try:
                    values, sib_values = compute(pos(mine), [pos(r) for r in theirs])
                    for sib, r, v in zip(siblings, theirs, sib_values):
                        sib._write(r, np.asarray(v))
                    self._write(mine, np.asarray(values))
                except BaseException:  # release: others need not wait for a claim that will not be filled
                    self._release(mine)
                    for sib, r in zip(siblings, theirs):
                        sib._release(r)
                    raise
                done += int(mine.size)
            missing = missing[self.flags[missing] == 0]
            if missing.size and not mine.size:  # all claimed by others: wait for their flags (or claims to expire)
                if not wait:
                    break
                time.sleep(_POLL_S)
        return (np.asarray(self.data[rows]) if wait else None), done
