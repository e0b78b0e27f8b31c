"""boto3 against obstore on a throwaway SeaweedFS, side by side in one run.

    python -m benchmarks.s3_clients [--small 2000] [--large-mib 256]

Each client and workload runs in its own child process so that its peak RSS
(``VmHWM``) is its own. Workloads: many small conditional puts, one large put
streamed from a file (multipart), and whether ``If-None-Match: *`` is honoured
on a single put and on a multipart put. The figures are in
``docs/adr/0009-s3-client.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.s3server import ACCESS_KEY, SECRET_KEY, SeaweedServer

PART = 8 << 20


def peak_rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_boto3(endpoint: str, bucket: str, workload: str, arg: str) -> dict[str, object]:
    import boto3
    from boto3.s3.transfer import TransferConfig
    from botocore.exceptions import ClientError

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1",
    )
    start = time.perf_counter()
    if workload == "small":
        body = os.urandom(1024)
        for i in range(int(arg)):
            client.put_object(Bucket=bucket, Key=f"small/{i}", Body=body, IfNoneMatch="*")
    elif workload == "large":
        config = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART)
        with open(arg, "rb") as source:
            client.upload_fileobj(source, bucket, "large", Config=config)
    elif workload == "conditional":
        client.put_object(Bucket=bucket, Key="cond", Body=b"a", IfNoneMatch="*")
        try:
            client.put_object(Bucket=bucket, Key="cond", Body=b"b", IfNoneMatch="*")
            single = False
        except ClientError as exc:
            single = exc.response["ResponseMetadata"]["HTTPStatusCode"] == 412
        upload = client.create_multipart_upload(Bucket=bucket, Key="cond")
        part = client.upload_part(
            Bucket=bucket, Key="cond", UploadId=upload["UploadId"], PartNumber=1, Body=b"c"
        )
        try:
            client.complete_multipart_upload(
                Bucket=bucket,
                Key="cond",
                UploadId=upload["UploadId"],
                MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
                IfNoneMatch="*",
            )
            multipart = False
        except ClientError as exc:
            multipart = exc.response["ResponseMetadata"]["HTTPStatusCode"] == 412
        return {"single_put": single, "multipart_complete": multipart}
    return {"seconds": round(time.perf_counter() - start, 2), "peak_rss_mib": peak_rss_mib()}


def run_obstore(endpoint: str, bucket: str, workload: str, arg: str) -> dict[str, object]:
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        bucket,
        endpoint=endpoint,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        region="us-east-1",
        client_options={"allow_http": True},
    )
    start = time.perf_counter()
    if workload == "small":
        body = os.urandom(1024)
        for i in range(int(arg)):
            obstore.put(store, f"small/{i}", body, mode="create")
    elif workload == "large":
        with open(arg, "rb") as source:
            obstore.put(store, "large", source, chunk_size=PART, use_multipart=True)
    elif workload == "conditional":
        obstore.put(store, "cond", b"a", mode="create")
        try:
            obstore.put(store, "cond", b"b", mode="create")
            single = False
        except Exception as exc:
            single = "AlreadyExists" in type(exc).__name__ or "412" in str(exc)
        try:
            obstore.put(store, "cond", [b"c"], mode="create", use_multipart=True)
            multipart = False
        except Exception as exc:
            multipart = f"{type(exc).__name__}: {str(exc)[:120]}"  # type: ignore[assignment]
        return {"single_put": single, "multipart_complete": multipart}
    return {"seconds": round(time.perf_counter() - start, 2), "peak_rss_mib": peak_rss_mib()}


def child(argv: list[str]) -> None:
    client, endpoint, bucket, workload, arg = argv
    runner = run_boto3 if client == "boto3" else run_obstore
    print(json.dumps(runner(endpoint, bucket, workload, arg)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--large-mib", type=int, default=256)
    args = parser.parse_args()
    import boto3

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        large = root / "large.bin"
        with large.open("wb") as out:
            for _ in range(args.large_mib):
                out.write(os.urandom(1 << 20))
        server = SeaweedServer(root / "server", volumes=32)
        server.start()
        try:
            admin = boto3.client(
                "s3",
                endpoint_url=server.endpoint,
                aws_access_key_id=ACCESS_KEY,
                aws_secret_access_key=SECRET_KEY,
                region_name="us-east-1",
            )
            results: dict[str, dict[str, object]] = {}
            for client in ("boto3", "obstore"):
                for workload, arg in (
                    ("small", str(args.small)),
                    ("large", str(large)),
                    ("conditional", ""),
                ):
                    bucket = f"bench-{client}-{workload}"
                    admin.create_bucket(Bucket=bucket)
                    out = subprocess.run(
                        [
                            sys.executable,
                            "-m",
                            "benchmarks.s3_clients",
                            "--child",
                            client,
                            server.endpoint,
                            bucket,
                            workload,
                            arg,
                        ],
                        capture_output=True,
                        text=True,
                    )
                    if out.returncode != 0:
                        print(client, workload, "failed:", out.stderr[-600:], flush=True)
                        continue
                    results[f"{client} {workload}"] = json.loads(out.stdout)
                    print(client, workload, results[f"{client} {workload}"], flush=True)
        finally:
            server.stop()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2:])
    else:
        main()
