"""A real S3-compatible server for tests: moto's server mode on 127.0.0.1, and the settings that point
tunegate's object store at a fresh bucket on it."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

from tests.api.server import free_port

KEY, SECRET, REGION = "testing", "testing", "us-east-1"


@contextmanager
def moto_server() -> Iterator[str]:
    """Start moto's S3 server in a thread; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def new_bucket(endpoint: str) -> dict[str, str]:
    """Create a fresh bucket; returns the ``TUNEGATE_*`` variables of a store under ``s3://<bucket>/tg``."""
    import boto3

    bucket = f"tg-{secrets.token_hex(6)}"
    client = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET, region_name=REGION
    )
    client.create_bucket(Bucket=bucket)
    return {
        "TUNEGATE_STORAGE_URL": f"s3://{bucket}/tg",
        "TUNEGATE_S3_ENDPOINT_URL": endpoint,
        "TUNEGATE_S3_ACCESS_KEY_ID": KEY,
        "TUNEGATE_S3_SECRET_ACCESS_KEY": SECRET,
        "TUNEGATE_S3_REGION": REGION,
    }


def bucket_keys(env: dict[str, str]) -> list[str]:
    """Every object key under the store's prefix, relative to it (what a test checks was written)."""
    import boto3

    bucket, prefix = env["TUNEGATE_STORAGE_URL"][len("s3://") :].split("/", 1)
    client = boto3.client(
        "s3",
        endpoint_url=env["TUNEGATE_S3_ENDPOINT_URL"],
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
        region_name=REGION,
    )
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/")
    return sorted(o["Key"][len(prefix) + 1 :] for page in pages for o in page.get("Contents", []))
