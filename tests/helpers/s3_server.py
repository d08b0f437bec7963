"""A real S3 endpoint on loopback for tests (moto's server): the s3:// paths of pyarrow and Ray are
exercised over HTTP without any cloud account."""

from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def local_s3(bucket: str = "time-ray-test"):
    """Yields ``s3://bucket?endpoint_override=...`` style URI parts: (base URI, query string)."""
    from moto.server import ThreadedMotoServer

    credentials = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in credentials}
    os.environ.update(credentials)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        import pyarrow.fs as pafs

        query = f"endpoint_override=http://{host}:{port}&region=us-east-1"
        fs, _ = pafs.FileSystem.from_uri(f"s3://{bucket}?{query}&allow_bucket_creation=true")
        fs.create_dir(bucket)
        yield f"s3://{bucket}", query
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
