"""The boto3 floors of bench/s3cases.py: one timed transfer, run by the S3 tools venv's Python.

    python s3boto.py upload|download|get ENDPOINT REGION ACCESS SECRET BUCKET KEY FILE
    python s3boto.py gets ENDPOINT REGION ACCESS SECRET BUCKET KEY COUNT
    python s3boto.py transfers ENDPOINT REGION ACCESS SECRET BUCKET KEY COUNT THUMB_KEY
    python s3boto.py tree ENDPOINT REGION ACCESS SECRET BUCKET PREFIX DIR JOBS

upload: upload_file(FILE) (boto3's multipart transfer, its defaults); download:
download_fileobj into FILE (boto3's ranged, concurrent download); get: one
get_object streamed into FILE. Prints {"seconds": s} timed around the transfer alone.
gets: COUNT get_object calls of a small object on one client; prints {"ms": [each]}.
transfers: COUNT times what a cold thumbnail on a bucket adds to a local one: get_object of
KEY (the original) read to the end, then put_object of THUMB_KEY's bytes; prints {"ms": [each]}.
COUNT "cue": one such timing per line read from stdin, each printed (ms) on its own line,
until stdin ends (so the benchmark can pair each with its own requests).
tree: every file under DIR uploaded to PREFIX + its relative path, upload_file (its
defaults) per file on a pool of JOBS threads sharing one client, as a sysadmin's copy
script would; prints {"seconds": s, "files": n, "bytes": b} timed around the transfers.
"""

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
import botocore.config

CHUNK = 1024 * 1024


def _timed_get(client, bucket, key):
    began = time.perf_counter()
    client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return (time.perf_counter() - began) * 1000.0


def _timed_transfers(client, bucket, key, thumb):
    began = time.perf_counter()
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    for _ in iter(lambda: body.read(CHUNK), b""):
        pass
    client.put_object(Bucket=bucket, Key="transfer-probe-boto3", Body=thumb)
    return (time.perf_counter() - began) * 1000.0


def _tree(client, bucket, prefix, top, jobs):
    """Upload every file under `top` to prefix + its relative path; return (files, bytes)."""
    paths = sorted(os.path.join(directory, name) for directory, _, names in os.walk(top)
                   for name in names)

    def upload(path):
        key = prefix + os.path.relpath(path, top).replace(os.sep, "/")
        client.upload_file(path, bucket, key)
        return os.path.getsize(path)

    with ThreadPoolExecutor(jobs) as pool:
        sizes = list(pool.map(upload, paths))
    return len(paths), sum(sizes)


def main(argv):
    op, endpoint, region, access_key, secret_key, bucket, key, path = argv[1:9]
    client = boto3.client(
        "s3", endpoint_url=endpoint, region_name=region, aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=botocore.config.Config(s3={"addressing_style": "path"}))
    client.head_bucket(Bucket=bucket)  # connect and sign once before the clock starts
    if op == "gets":
        print(json.dumps({"ms": [_timed_get(client, bucket, key) for _ in range(int(path))]}))
        return
    if op == "transfers" and path == "cue":
        thumb = client.get_object(Bucket=bucket, Key=argv[9])["Body"].read()
        for _ in sys.stdin:
            print(_timed_transfers(client, bucket, key, thumb), flush=True)
        return
    if op == "transfers":
        thumb = client.get_object(Bucket=bucket, Key=argv[9])["Body"].read()
        print(json.dumps({"ms": [_timed_transfers(client, bucket, key, thumb)
                                 for _ in range(int(path))]}))
        return
    if op == "tree":
        began = time.perf_counter()
        files, size = _tree(client, bucket, key, path, int(argv[9]))
        print(json.dumps({"seconds": time.perf_counter() - began, "files": files,
                          "bytes": size}))
        return
    began = time.perf_counter()
    if op == "upload":
        client.upload_file(path, bucket, key)
    elif op == "download":
        with open(path, "wb") as target:
            client.download_fileobj(bucket, key, target)
    elif op == "get":
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        with open(path, "wb") as target:
            for chunk in iter(lambda: body.read(CHUNK), b""):
                target.write(chunk)
    else:
        raise SystemExit("unknown operation %r" % op)
    print(json.dumps({"seconds": time.perf_counter() - began}))


if __name__ == "__main__":
    main(sys.argv)
