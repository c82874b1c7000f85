"""A moto S3 server on 127.0.0.1 for the object-storage tests, started and stopped by the tests.

The server is a real HTTP endpoint (``moto_server``), so pyarrow's S3 client, Ray Data's Parquet
sink and Ray Train's checkpoint upload all talk S3 to it exactly as they would to AWS or MinIO.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

S3_ENV = {  # what a user exports for an S3-compatible store; credentials are moto's dummies
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def moto_server(log_dir: Path) -> Iterator[str]:
    """Run ``moto_server`` on a free port; yields its endpoint URL."""
    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"]
    log = open(log_dir / "moto.log", "wb")
    proc = subprocess.Popen([*cmd, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=2)
                break
            except OSError as e:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start; see {log_dir / 'moto.log'}") from e
                time.sleep(0.2)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def create_bucket(endpoint: str, bucket: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name=S3_ENV["AWS_DEFAULT_REGION"]).create_bucket(Bucket=bucket)


def list_keys(endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name=S3_ENV["AWS_DEFAULT_REGION"])
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return sorted(keys)


def local_files_named(roots: list[Path], names: tuple[str, ...], newer_than: float) -> list[Path]:
    """Files under ``roots`` modified after ``newer_than`` whose name starts with one of ``names``."""
    found = []
    for root in roots:
        for dirpath, _, files in os.walk(root):
            for name in files:
                if name.startswith(names):
                    p = Path(dirpath) / name
                    try:
                        if p.stat().st_mtime >= newer_than:
                            found.append(p)
                    except OSError:
                        pass
    return found
