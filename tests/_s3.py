"""A real S3-compatible server for the tests: moto's standalone server on 127.0.0.1 and a free port.

`S3Server.env()` is what a process needs to use it (the standard AWS variables, AWS_ENDPOINT_URL
pointing at it); `bucket()` makes a fresh bucket; `objects()` lists what a prefix holds.
"""
from __future__ import annotations

import itertools
import os
import socket
import subprocess
from dataclasses import dataclass, field

from catkd.bench.storage import moto_server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class S3Server:
    port: int
    proc: subprocess.Popen
    scratch: str = ""  # the server's own files (its request recording), removed with it
    _n: itertools.count = field(default_factory=itertools.count)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self):
        import boto3

        e = self.env()
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=e["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=e["AWS_SECRET_ACCESS_KEY"], region_name=e["AWS_DEFAULT_REGION"])

    def bucket(self, stem: str = "catkd") -> str:
        name = f"{stem}-{os.getpid()}-{next(self._n)}"
        self.client().create_bucket(Bucket=name)
        return name

    def objects(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """{key: size} under `prefix`."""
        out: dict[str, int] = {}
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
        return out

    def read(self, bucket: str, key: str) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()


def start() -> S3Server:
    import tempfile

    # moto's request recorder (a test counts requests with it) writes to its working directory otherwise
    scratch = tempfile.mkdtemp(prefix="catkd-moto-")
    proc, port = moto_server({"MOTO_RECORDER_FILEPATH": os.path.join(scratch, "recording")})
    return S3Server(port, proc, scratch)


def stop(server: S3Server) -> None:
    import shutil

    server.proc.terminate()
    try:
        server.proc.wait(10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
    if server.scratch:
        shutil.rmtree(server.scratch, ignore_errors=True)
