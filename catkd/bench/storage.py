"""`storage`: the same --smoke study on a local directory and in object storage, side by side.

Object storage is the endpoint in AWS_ENDPOINT_URL (with its bucket in CATKD_BENCH_BUCKET) or, when
none is set, moto's S3 server (the test dependency `moto[server]`) started here on 127.0.0.1: a
server on the same machine, so the ratio is what catkd's own traffic costs (listing, puts, Tune's
syncs), not a network's latency. Also counts the objects one study writes and their total size.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time

from catkd.bench.common import SMOKE_STUDY, run_smoke_study


def moto_server(extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen, int]:
    """moto's standalone S3 server on 127.0.0.1 and a free port, once it accepts connections."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            env={**os.environ, **(extra_env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, port
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError("moto's S3 server did not start (pip install 'moto[server]')")
            time.sleep(0.1)


def _moto() -> tuple[subprocess.Popen, dict[str, str]]:
    proc, port = moto_server()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    return proc, env


def bench_storage(study: str = SMOKE_STUDY, rounds: int = 2) -> dict:
    """Wall time of `study --smoke` with --storage a local directory and s3://, alternating, after an
    untimed warm-up that trains the smoke teacher; the objects of one s3 run."""
    import statistics

    from catkd.storage import location

    server = None
    if not os.environ.get("AWS_ENDPOINT_URL"):
        server, env = _moto()
        os.environ.update(env)
    try:
        bucket = os.environ.get("CATKD_BENCH_BUCKET") or "catkd-bench"
        if server is not None:
            import boto3

            boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_bucket(Bucket=bucket)
        walls: dict[str, list[float]] = {"local": [], "s3": []}
        with tempfile.TemporaryDirectory(prefix="catkd-bench-") as tmp:
            os.environ.setdefault("CATKD_CACHE", os.path.join(tmp, ".cache"))  # the smoke teacher, once
            run_smoke_study(study, tmp, "warm")
            uri = f"s3://{bucket}/bench-{int(time.time())}"
            for i in range(rounds):
                for side, where in (("local", tmp), ("s3", uri)):
                    wall, _ = run_smoke_study(study, where, f"run{i}")
                    walls[side].append(wall)
                    print(f"storage: {study} --smoke on {side} ({where}/run{i}): {wall:.1f} s")
            files = location(uri).files()
            one = {k: v for k, v in files.items() if k.startswith("run0/")}
            teacher = {k: v for k, v in files.items() if k.startswith(".cache/")}
        local, s3 = statistics.median(walls["local"]), statistics.median(walls["s3"])
        size = sum(s for s, _ in one.values())
        print(f"storage: median wall local {local:.1f} s, s3 {s3:.1f} s: s3 / local = {s3 / local:.3f}; one study "
              f"wrote {len(one)} objects, {size / 1e6:.2f} MB (plus the smoke teacher's copy: {len(teacher)} "
              f"object, {sum(s for s, _ in teacher.values()) / 1e6:.2f} MB)")
        return {"storage_local_wall_s": local, "storage_s3_wall_s": s3, "storage_s3_over_local": s3 / local,
                "storage_objects": len(one), "storage_bytes": size,
                "storage_endpoint": "moto on 127.0.0.1" if server is not None else "AWS_ENDPOINT_URL"}
    finally:
        if server is not None:
            server.terminate()
