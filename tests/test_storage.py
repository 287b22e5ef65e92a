"""catkd.storage: an experiment's place on a disk or in object storage (tested against moto's S3 server)."""
from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from _s3 import free_port
from catkd.storage import Mirror, StorageError, check, location


def test_a_local_path_and_a_file_uri_are_local_directories(tmp_path):
    a = location(tmp_path / "x" / ".." / "y")
    assert a.local and a.path == str((tmp_path / "y").resolve())
    b = location(f"file://{tmp_path}/z")
    assert b.local and b.path.endswith("/z")
    check(a)  # nothing to check on a disk


def test_an_object_is_written_whole_read_back_and_listed(s3):
    root = location(f"{s3.uri}/pre")
    assert not root.local and not root.exists() and root.files() == {}
    (root / "exp" / "a.txt").write_bytes(b"hello")
    (root / "exp" / "sub" / "b.bin").write_bytes(bytes(1000))
    assert (root / "exp" / "a.txt").read_bytes() == b"hello"
    assert root.exists() and (root / "exp" / "a.txt").is_file() and not (root / "exp" / "sub").is_file()
    assert {k: v[0] for k, v in root.files().items()} == {"exp/a.txt": 5, "exp/sub/b.bin": 1000}
    assert s3.objects() == {"pre/exp/a.txt": 5, "pre/exp/sub/b.bin": 1000}
    assert str(root / "exp") == f"{s3.uri}/pre/exp"


def test_a_small_object_is_one_put_not_a_multipart_upload(s3):
    """Tune and catkd put many small files (each trial's result.json, params, the experiment state) again
    and again: each is one request, not three (start, part, complete)."""
    import json
    import urllib.request

    def moto(path: str, post: bool = False) -> str:  # moto's recorder: the requests it served
        req = urllib.request.Request(s3.server.endpoint + "/moto-api/recorder/" + path, data=b"" if post else None,
                                     method="POST" if post else "GET")
        with urllib.request.urlopen(req) as r:
            return r.read().decode()

    root = location(f"{s3.uri}/pre")
    moto("start-recording", post=True)
    try:
        (root / "result.json").write_bytes(b"{}\n" * 100)
    finally:
        moto("stop-recording", post=True)
    served = [json.loads(line) for line in moto("download-recording").splitlines() if line.strip()]
    assert [(r["method"], r["url"].split("/", 3)[3]) for r in served if s3.bucket in r["url"]] == [
        ("PUT", f"{s3.bucket}/pre/result.json")]
    assert s3.objects() == {"pre/result.json": 300}
    # a query the user gave is kept, and says what it says
    assert location(f"{s3.uri}/pre?allow_delayed_open=false").fs.__reduce__()[1][0]["allow_delayed_open"] is False


def test_a_mirror_fetches_and_puts_back_only_what_changed(s3, tmp_path):
    remote = location(f"{s3.uri}/exp")
    (remote / "t1" / "result.json").write_bytes(b"1\n")
    (remote / "t1" / "checkpoint_000001" / "checkpoint.pth").write_bytes(b"big")
    m = Mirror(tmp_path / "copy", remote)
    small = lambda rel: "checkpoint_" not in rel  # noqa: E731
    assert m.pull(small) == ["t1/result.json"]
    assert not (tmp_path / "copy" / "t1" / "checkpoint_000001").exists()
    assert m.pull(small) == []  # unchanged: not fetched again
    (remote / "t1" / "result.json").write_bytes(b"1\n2\n")
    assert m.pull(small) == ["t1/result.json"] and (tmp_path / "copy" / "t1" / "result.json").read_text() == "1\n2\n"
    # the driver's own files go back; fetched files it did not touch do not; hidden files never
    (tmp_path / "copy" / "stage.json").write_text("{}")
    (tmp_path / "copy" / ".stage.json.123.tmp").write_text("partial")
    assert m.push() == ["stage.json"]
    assert m.push() == []
    (tmp_path / "copy" / "stage.json").write_text('{"search": "done"}')
    assert m.push() == ["stage.json"]
    assert s3.read("exp/stage.json") == b'{"search": "done"}'
    assert ".stage.json.123.tmp" not in str(s3.objects())


def test_a_sqlite_file_being_written_is_put_back_as_a_consistent_database(s3, tmp_path):
    db = tmp_path / "copy" / "optuna.db"
    db.parent.mkdir()
    con = sqlite3.connect(db, check_same_thread=False)
    con.execute("pragma synchronous=off")  # a fast writer: many commits between two puts
    con.execute("create table t (i integer, pad blob)")
    con.commit()
    stop_writing = threading.Event()
    committed = [0]

    def writer():
        while not stop_writing.is_set():
            con.execute("insert into t values (?, zeroblob(500))", (committed[0],))
            con.commit()
            committed[0] += 1

    th = threading.Thread(target=writer)
    th.start()
    m = Mirror(tmp_path / "copy", location(f"{s3.uri}/exp"))
    try:
        pushed = 0
        for _ in range(3):  # each put while the writer goes on, after some commits since the last
            seen = committed[0]
            while committed[0] < seen + 20 and th.is_alive():
                time.sleep(0.001)
            pushed += len(m.push())
    finally:
        stop_writing.set()
        th.join()
    got = tmp_path / "got.db"
    got.write_bytes(s3.read("exp/optuna.db"))
    with sqlite3.connect(got) as c:
        assert c.execute("pragma integrity_check").fetchone() == ("ok",)
        n = c.execute("select count(*), max(i) from t").fetchone()
    assert pushed == 3 and n[0] == n[1] + 1  # rows 0..max, none half-written
    assert not any(k.endswith("-journal") for k in s3.objects())


def test_a_missing_bucket_is_named(s3):
    with pytest.raises(StorageError, match=r"s3://no-such-bucket/x: the bucket 'no-such-bucket' does not exist"):
        check(location("s3://no-such-bucket/x"))


def test_an_endpoint_that_does_not_answer_is_reported_in_seconds(s3, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(StorageError, match=r"no answer in 2 s .*AWS_ENDPOINT_URL=http://127.0.0.1"):
        check(location(f"{s3.uri}/x"), timeout=2)


def test_refused_credentials_are_named(s3):
    import urllib.request

    def auth_after(n: str) -> None:  # moto checks every request's key after the next n (inf: none)
        urllib.request.urlopen(urllib.request.Request(s3.server.endpoint + "/moto-api/reset-auth", data=n.encode(),
                                                      headers={"Content-Type": "text/plain"}))

    auth_after("0")
    try:
        with pytest.raises(StorageError, match=r"s3://some-bucket/x: (access denied|the credentials were refused)"):
            check(location("s3://some-bucket/x"))
    finally:
        auth_after("inf")
    check(location(s3.uri))  # the server accepts the key again, for the tests after this one


def test_an_unknown_scheme_is_refused():
    with pytest.raises(StorageError, match=r"nosuch://b/x: not a storage URI pyarrow can open"):
        location("nosuch://b/x")
