"""Point this clone at the team's DVC remote, in ``.dvc/config.local`` (git-ignored, mode 0600).

    python -m stages.remote s3://team-bucket/mnist [--endpoint https://minio.example.com]    (make remote)
    python -m stages.remote /shared/mnist-dvc

The remote ``shared`` becomes the default; the committed ``.dvc/config`` is
not touched, so a URL that carries credentials, an endpoint or a bucket name
stays with this clone. For S3 and S3-compatible stores (MinIO, Ceph, R2, ...)
the endpoint is ``--endpoint`` and the credentials come from the usual AWS
variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``)
or ``dvc remote modify --local shared access_key_id ...``; short connect and
read timeouts make an unreachable endpoint fail within seconds instead of
hanging. ``make remote`` hands the URL over in the environment (``REMOTE``,
``ENDPOINT``), so it is not echoed; what is printed is redacted.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from stages import redact

NAME = "shared"
# Seconds: how long to wait for a connection, and for each read of an answer (not for a whole transfer).
S3_TIMEOUTS = {"connect_timeout": 5, "read_timeout": 60}


class RemoteError(ValueError):
    pass


def remote_config(url: str, endpoint: str | None = None) -> dict:
    """The ``[remote "shared"]`` section for ``url``."""
    if not url:
        raise RemoteError("set REMOTE=<s3://bucket/path or a directory>")
    if url.startswith("s3://"):
        if not url.removeprefix("s3://").strip("/"):
            raise RemoteError(f"{url}: no bucket name")
        config = {"url": url, **S3_TIMEOUTS}
        if endpoint:
            if not endpoint.startswith(("http://", "https://")):
                raise RemoteError(f"ENDPOINT={redact.uri(endpoint)}: expected http://host:port or https://host")
            config["endpointurl"] = endpoint
        return config
    if endpoint:
        raise RemoteError("ENDPOINT is for S3 and S3-compatible remotes (REMOTE=s3://...)")
    if "://" not in url:  # a directory: DVC would read a relative path against .dvc/, not where make ran
        url = os.path.abspath(os.path.expanduser(url))
    return {"url": url}


def configure(url: str, endpoint: str | None = None, repo: Path = Path(".")) -> Path:
    """Write the remote into ``repo/.dvc/config.local`` as the default remote (replacing an earlier one)."""
    from dvc.config import Config, ConfigError  # noqa: PLC0415 - DVC's import is slow; only this command needs it

    dvc_dir = Path(repo) / ".dvc"
    if not dvc_dir.is_dir():
        raise RemoteError(f"{Path(repo).resolve()} is not a DVC repository (no .dvc/)")
    section = remote_config(url, endpoint)
    local = dvc_dir / Config.CONFIG_LOCAL
    if not local.exists():
        local.touch(mode=0o600)
    try:
        with Config(dvc_dir=str(dvc_dir)).edit("local") as conf:
            conf["remote"][NAME] = section
            conf["core"]["remote"] = NAME
    except ConfigError as exc:
        raise RemoteError(redact.text(str(exc))) from None
    local.chmod(0o600)
    return local


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", help="s3://bucket/path or a directory (default: $REMOTE)")
    parser.add_argument("--endpoint", help="S3-compatible endpoint, e.g. https://minio.example.com ($ENDPOINT)")
    args = parser.parse_args(argv)
    url = args.url or os.environ.get("REMOTE", "")
    endpoint = args.endpoint or os.environ.get("ENDPOINT") or None
    try:
        path = configure(url, endpoint)
    except RemoteError as exc:
        print(f"remote: error: {redact.text(str(exc))}", file=sys.stderr)
        return 2
    where = f" (endpoint {redact.uri(endpoint)})" if endpoint else ""
    print(f"remote: {NAME} = {redact.uri(url)}{where}, the default remote, in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
