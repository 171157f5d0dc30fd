"""An S3 server for the tests: moto's ThreadedMotoServer on 127.0.0.1 (a free port), started
once per session, with one bucket; every test works under a prefix of its own.

With ``GAIA_CAS_S3_ENDPOINT`` set (and AWS_* credentials, e.g. from ``ceph-rgw start``), the
same tests run against that engine instead: a bucket is created there and emptied and removed
at the end.
"""

from __future__ import annotations

import os
import socket
from collections import namedtuple

import pytest

S3Server = namedtuple("S3Server", "endpoint bucket env real")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    import boto3

    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                            "AWS_REGION", "AWS_SESSION_TOKEN")}
    endpoint = os.environ.get("GAIA_CAS_S3_ENDPOINT")
    server = None
    if endpoint is None:
        from moto.server import ThreadedMotoServer

        port = _free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        endpoint = f"http://127.0.0.1:{port}"
        os.environ["AWS_ACCESS_KEY_ID"] = "gaia-test-key"
        os.environ["AWS_SECRET_ACCESS_KEY"] = "gaia-test-secret"
        os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    region = os.environ["AWS_DEFAULT_REGION"]
    bucket = f"gaia-cas-test-{os.urandom(4).hex()}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name=region)
    client.create_bucket(Bucket=bucket)
    env = {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    try:
        yield S3Server(endpoint, bucket, env, server is None)
    finally:
        try:
            paginator = client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=bucket):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    client.delete_objects(Bucket=bucket, Delete={"Objects": keys})
            client.delete_bucket(Bucket=bucket)
        except Exception:
            pass
        if server is not None:
            server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def s3_url(server: S3Server, prefix: str | None = None) -> str:
    return f"s3://{server.bucket}/{prefix or 't-' + os.urandom(6).hex()}"


def s3_stores(server: S3Server, name: str = "test"):
    """An object store and a manifest store on a fresh prefix of the session's bucket."""
    from gaia_cas.s3 import Remote

    return Remote(name, s3_url(server), server.endpoint, None).open()


@pytest.fixture
def origin(cli, root, s3_server):
    """The test root's remote 'origin' on a fresh prefix: (url, endpoint)."""
    url = s3_url(s3_server)
    assert cli("remote", "add", "origin", url, "--endpoint", s3_server.endpoint).code == 0
    return url, s3_server.endpoint


def second_store(cli, tmp_path, origin, name):
    """Another root (another trainer or host) with the same remote 'origin'."""
    from gaia_cas.repo import Repository

    path = tmp_path / name
    Repository.init(path)
    assert cli("remote", "add", "origin", origin[0], "--endpoint", origin[1], root_dir=path).code == 0
    return path



class ChunkBucket:
    """A trainer's store (chunked from 4 MiB up) with a remote 'origin' on a fresh prefix, and
    raw access to the bucket under that prefix: what the tests of chunks on the remote share."""

    def __init__(self, tmp_path, server: S3Server, name: str = "trainer"):
        import boto3

        self.url = s3_url(server)
        self.endpoint = server.endpoint
        self.bucket = server.bucket
        self.prefix = self.url.split("/", 3)[3] + "/"
        self.raw = boto3.client("s3", endpoint_url=server.endpoint)
        self.tmp = tmp_path
        self.trainer = self.store(name)

    def store(self, name: str):
        from gaia_cas.recipes import set_chunk_threshold
        from gaia_cas.repo import Repository

        repo = Repository.init(self.tmp / name)
        set_chunk_threshold(repo.layout, 4 << 20)
        repo.add_remote("origin", self.url, endpoint=self.endpoint)
        return repo

    def deploy(self, repo, data: bytes, name: str = "variables.data", graph: bytes = b"graph") -> str:
        """Deploy a SavedModel-like folder: ``name`` holding ``data`` beside a small graph file."""
        src = self.tmp / f"src-{repo.root.name}"
        src.mkdir(parents=True, exist_ok=True)
        for old in src.iterdir():
            old.unlink()
        (src / name).write_bytes(data)
        (src / "saved_model.pb").write_bytes(graph)
        return repo.deploy("ssd", src).version

    def keys(self, kind: str) -> set:
        """The oids under PREFIX/<kind>/ (objects, recipes)."""
        base = f"{self.prefix}{kind}/"
        found = set()
        for page in self.raw.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
            found.update(o["Key"][len(base):].replace("/", "", 1) for o in page.get("Contents", []))
        return found

    def put(self, kind: str, oid: str, data: bytes) -> None:
        """Write raw bytes under PREFIX/<kind>/<oid>: a co-tenant, or bit rot."""
        self.raw.put_object(Bucket=self.bucket, Key=f"{self.prefix}{kind}/{oid[:2]}/{oid[2:]}", Body=data)

    def recipes(self, repo):
        from gaia_cas.remotes import get

        objects, _ = get(repo, "origin").open()
        return objects.recipes
