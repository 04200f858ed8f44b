"""What the lake's Python checkers share: where a lake is, how to reach it, and how to exit.

- `filesystem(output)`: a pyarrow filesystem and the root path inside it, for a local folder,
  a `file://` URL or an `s3://bucket/prefix` (S3 settings from the standard `AWS_*` variables).
- `delta_location(output)`: the table-root URI and `storage_options` for the `deltalake` package
  (None for a local folder).
- `report(summary, problems)`: prints a checker's result and exits 1 if it found problems.
- `run(main)`: runs a checker's `main` and exits without interpreter finalisation.
"""
import json
import os
import sys


def local_path(output):
    return os.path.abspath(output[len("file://"):] if output.startswith("file://") else output)


def filesystem(output):
    import pyarrow.fs as pafs  # here: the Spark check's venv has no pyarrow

    if not output.startswith("s3://"):
        return pafs.LocalFileSystem(), local_path(output)
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    fs = pafs.S3FileSystem(
        access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
        secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
        region=os.environ.get("AWS_REGION", "us-east-1"),
        endpoint_override=endpoint.split("://", 1)[1] if endpoint else None,
        scheme="http" if endpoint and endpoint.startswith("http://") else "https",
    )
    return fs, output[len("s3://"):].rstrip("/")


def delta_location(output):
    if not output.startswith("s3://"):
        return local_path(output), None
    opts = {"AWS_REGION": os.environ.get("AWS_REGION", "us-east-1"), "AWS_ALLOW_HTTP": "true"}
    for k in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"]:
        if os.environ.get(k):
            opts[k] = os.environ[k]
    return output.rstrip("/"), opts


def report(summary, problems):
    """Prints `summary` as one JSON line on stdout and each problem (the first 50) on stderr as
    `PROBLEM: …`; exits 1 if there is any."""
    print(json.dumps(summary))
    if problems:
        for p in problems[:50]:
            print("PROBLEM:", p, file=sys.stderr)
        sys.exit(1)


def run(main):
    """Runs `main()` and exits with its status without interpreter finalisation: pyarrow's C++
    I/O threads (S3) and the deltalake package's runtime can abort at shutdown ("terminate
    called without an active exception"), turning a finished check into a failure. Everything
    has been printed and flushed by then."""
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
