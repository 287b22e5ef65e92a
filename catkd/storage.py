"""Where an experiment lives: a local (or mounted) directory, or an object-store URI (s3://, gs://).

Both go through pyarrow's filesystems, the ones Ray Tune's `storage_filesystem` takes; the endpoint
and credentials of s3:// come from the standard AWS variables (AWS_ENDPOINT_URL for MinIO and other
S3-compatible servers, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION / AWS_DEFAULT_REGION).

`Location` is one place on one filesystem. `Mirror` keeps a local scratch copy of some files of a
Location in step with it: code that reads and writes plain files (results, stage.json, Optuna's
SQLite file) works on the copy, and each changed file goes back as one whole object (write, then
one put), so a reader never sees part of one. This module knows nothing of studies.
"""
from __future__ import annotations

import os
import re
import shutil
import sqlite3
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Optional, Union

from catkd.fsutil import atomic_write_bytes

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def timeout_s() -> float:
    """Seconds an endpoint may take to answer before it is reported unreachable (CATKD_STORAGE_TIMEOUT)."""
    return float(os.environ.get("CATKD_STORAGE_TIMEOUT") or 30)

_SQLITE_SIDE = ("-journal", "-wal", "-shm")  # SQLite's side files: the backup copy holds their content


class StorageError(Exception):
    """A storage location that cannot be used: names the location and what failed."""


def is_uri(where: Union[str, Path]) -> bool:
    return bool(_URI.match(str(where)))


def _timed(what: str, fn: Callable[[], Any], timeout: float) -> Any:
    """Run `fn` in a thread: pyarrow retries an unreachable endpoint for minutes, and a user should hear
    about it in seconds. (pyarrow releases the GIL while it waits, so the thread can be left behind.)"""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e

    t = threading.Thread(target=run, name="catkd-storage", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise StorageError(f"{what}: no answer in {timeout:.0f} s (is the endpoint right and reachable? "
                           f"AWS_ENDPOINT_URL={os.environ.get('AWS_ENDPOINT_URL', '<unset>')})")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split())
    for pat, say in ((r"INVALID_ACCESS_KEY_ID|InvalidAccessKeyId|SignatureDoesNotMatch|SIGNATURE_DOES_NOT_MATCH",
                      "the credentials were refused (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"),
                     (r"ACCESS_DENIED|AccessDenied|Forbidden|HTTP response code 403",
                      "access denied (the credentials may not read or write this bucket)"),
                     (r"NETWORK_CONNECTION|Could not resolve|Couldn't connect|Connection refused|curlCode",
                      "cannot connect to the endpoint")):
        if re.search(pat, text):
            return f"{say} [{text[:240]}]"
    return f"{type(e).__name__}: {text[:300]}"


@dataclass(frozen=True)
class Location:
    """One place: `fs` (a pyarrow FileSystem) and `path` on it; `uri` is how the user wrote it."""

    fs: Any
    path: str
    uri: str

    @property
    def local(self) -> bool:
        import pyarrow.fs as pafs

        return isinstance(self.fs, pafs.LocalFileSystem)

    def __truediv__(self, name: str) -> "Location":
        sep = "" if self.uri.endswith("/") else "/"
        return Location(self.fs, str(PurePosixPath(self.path, name)), f"{self.uri}{sep}{name}")

    def __str__(self) -> str:
        return self.uri

    def _info(self):
        return self.fs.get_file_info(self.path)

    def is_file(self) -> bool:
        import pyarrow.fs as pafs

        return self._info().type == pafs.FileType.File

    def exists(self) -> bool:
        import pyarrow.fs as pafs

        return self._info().type != pafs.FileType.NotFound

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def write_bytes(self, data: bytes) -> None:
        """Replace the file as a whole: locally by rename, on an object store by one put of bytes
        already in memory (an object is visible only once its upload completes)."""
        if self.local:
            atomic_write_bytes(self.path, data)
            return
        with self.fs.open_output_stream(self.path) as f:
            f.write(data)

    def upload(self, local_file: Union[str, Path]) -> None:
        self.write_bytes(Path(local_file).read_bytes())

    def download(self, local_file: Union[str, Path]) -> None:
        atomic_write_bytes(local_file, self.read_bytes())

    def files(self) -> dict[str, tuple[int, Any]]:
        """{relative path: (size, mtime)} of every file below this location ({} when there is none)."""
        import pyarrow.fs as pafs

        sel = pafs.FileSelector(self.path, recursive=True, allow_not_found=True)
        base = self.path.rstrip("/") + "/"
        return {i.path[len(base):]: (i.size, i.mtime_ns) for i in self.fs.get_file_info(sel)
                if i.type == pafs.FileType.File and i.path.startswith(base)}


def location(where: Union[str, Path], timeout: Optional[float] = None) -> Location:
    """The Location of a local path or a URI (exit-2 material on failure: StorageError)."""
    import pyarrow.fs as pafs

    where = str(where)
    if not is_uri(where):
        return Location(pafs.LocalFileSystem(), str(Path(where).expanduser().resolve()),
                        str(Path(where).expanduser().resolve()))
    try:
        fs, path = _timed(where, lambda: pafs.FileSystem.from_uri(_with_delayed_open(where)), timeout or timeout_s())
    except StorageError:
        raise
    except Exception as e:  # noqa: BLE001 - an unknown scheme, a malformed URI
        raise StorageError(f"{where}: not a storage URI pyarrow can open ({_reason(e)})") from None
    return Location(fs, path.rstrip("/"), where.rstrip("/"))


def _with_delayed_open(uri: str) -> str:
    """An s3:// URI asking pyarrow to open an object only once the first part is written: a small file
    (every one Tune and catkd write but checkpoints) is then one PUT, not a three-request multipart
    upload. What a user's query already says about it is kept."""
    if not uri.lower().startswith("s3://") or "allow_delayed_open" in uri:
        return uri
    return uri + ("&" if "?" in uri else "?") + "allow_delayed_open=true"


def check(loc: Location, timeout: Optional[float] = None) -> None:
    """An object-store location can be listed: the endpoint answers, the bucket exists, the
    credentials are accepted. Reads only: nothing is written."""
    import pyarrow.fs as pafs

    if loc.local:
        return
    bucket = loc.path.split("/", 1)[0]

    def probe() -> None:
        if loc.fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise StorageError(f"{loc.uri}: the bucket {bucket!r} does not exist (create it first)")
        loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=False, allow_not_found=True))

    try:
        _timed(loc.uri, probe, timeout or timeout_s())
    except StorageError:
        raise
    except Exception as e:  # noqa: BLE001 - pyarrow's OSError for every AWS error
        raise StorageError(f"{loc.uri}: {_reason(e)}") from None


def scratch_dir(prefix: str) -> Path:
    """A fresh local scratch directory (under $CATKD_SCRATCH or the system's temporary directory)."""
    base = os.environ.get("CATKD_SCRATCH") or None
    if base:
        Path(base).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"catkd-{prefix}-", dir=base))


def _snapshot_sqlite(src: Path) -> bytes:
    """A consistent copy of a SQLite file another connection may be writing (the backup API)."""
    with tempfile.TemporaryDirectory() as d:
        dst = Path(d) / "copy.db"
        with sqlite3.connect(f"file:{src}?mode=ro", uri=True) as a, sqlite3.connect(dst) as b:
            a.backup(b)
        return dst.read_bytes()


class Mirror:
    """A local copy of (part of) a Location. `pull(want)` fetches the remote files `want` accepts that
    changed since they were last fetched; `push(want)` puts back the local files `want` accepts that
    changed since they were last put or fetched, each as one whole object (SQLite files through the
    backup API, so a file being written is copied consistently)."""

    def __init__(self, local: Path, remote: Location):
        self.local, self.remote = Path(local), remote
        self._remote_seen: dict[str, tuple[int, Any]] = {}
        self._local_seen: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()  # Tune's callbacks and the driver may sync at once

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its callbacks (which hold a Mirror)
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _stat(self, rel: str) -> Optional[tuple[int, int]]:
        try:
            st = (self.local / rel).stat()
        except FileNotFoundError:
            return None
        return st.st_size, st.st_mtime_ns

    def pull(self, want: Callable[[str], bool] = lambda rel: True) -> list[str]:
        with self._lock:
            got = []
            for rel, stat in sorted(self.remote.files().items()):
                if not want(rel) or self._remote_seen.get(rel) == stat:
                    continue
                (self.remote / rel).download(self.local / rel)
                self._remote_seen[rel] = stat
                self._local_seen[rel] = self._stat(rel) or (0, 0)
                got.append(rel)
            return got

    def push(self, want: Callable[[str], bool] = lambda rel: True) -> list[str]:
        with self._lock:
            put = []
            for p in sorted(self.local.rglob("*")):
                rel = p.relative_to(self.local).as_posix()
                if not p.is_file() or p.name.startswith(".") or p.name.endswith(_SQLITE_SIDE) or not want(rel):
                    continue
                stat = self._stat(rel)
                if stat is None or self._local_seen.get(rel) == stat:
                    continue
                data = _snapshot_sqlite(p) if p.suffix == ".db" else p.read_bytes()
                (self.remote / rel).write_bytes(data)
                self._local_seen[rel] = stat
                put.append(rel)
            return put

    def remove_local(self) -> None:
        shutil.rmtree(self.local, ignore_errors=True)
