"""Point this clone at the team's DVC remote, in ``.dvc/config.local`` (git-ignored, mode 0600).

    python -m stages.tools.remote s3://team-bucket/mnist [--endpoint https://minio.example.com]    (make remote)
    python -m stages.tools.remote /shared/mnist-dvc

The remote ``shared`` becomes the default; the committed ``.dvc/config`` is
not touched, so a URL that carries credentials, an endpoint or a bucket name
stays with this clone. For S3 and S3-compatible stores (MinIO, Ceph, R2, ...)
the endpoint is ``--endpoint`` and the credentials come from the usual AWS
variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``)
or ``dvc remote modify --local shared access_key_id ...``; short connect and
read timeouts make an unreachable endpoint fail within seconds instead of
hanging, and the remote is tried once right away, through the S3 filesystem
DVC builds for it (so with every setting ``dvc push`` honours: ``profile``,
``credentialpath``, ``configpath``, ...), in one line naming a wrong key, a
missing bucket or an unreachable endpoint. ``make remote`` hands the URL over
in the environment (``REMOTE``, ``ENDPOINT``), so it is not echoed; what is
printed is redacted.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from stages.lib import redact, s3

NAME = "shared"
# Seconds: how long to wait for a connection, and for each read of an answer (not for a whole transfer).
S3_TIMEOUTS = {"connect_timeout": 5, "read_timeout": 60}


# What `dvc remote modify --local shared ...` may have set by hand that a new `make remote` keeps.
KEPT = ("access_key_id", "secret_access_key", "session_token", "profile", "region", "credentialpath", "configpath")


class RemoteError(ValueError):
    pass


def valid_endpoint(endpoint: str) -> bool:
    """Whether botocore accepts ``endpoint`` (it raises a bare ValueError, URL and all, on one it refuses: an
    underscore in the host, an unclosed bracket), checked before the remote is written so that neither this
    command nor a later ``dvc push`` meets it."""
    from botocore.utils import is_valid_endpoint_url, is_valid_ipv6_endpoint_url  # noqa: PLC0415 - with dvc-s3

    try:
        return bool(is_valid_endpoint_url(endpoint) or is_valid_ipv6_endpoint_url(endpoint))
    except ValueError:  # urllib cannot even split it
        return False


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
            if not valid_endpoint(endpoint):
                raise RemoteError(f"ENDPOINT={redact.uri(endpoint)}: {s3.INVALID_ENDPOINT}")
            config["endpointurl"] = endpoint
        return config
    if endpoint:
        raise RemoteError("ENDPOINT is for S3 and S3-compatible remotes (REMOTE=s3://...)")
    if "://" not in url:  # a directory: DVC would read a relative path against .dvc/, not where make ran
        url = os.path.abspath(os.path.expanduser(url))
    return {"url": url}


def configure(url: str, endpoint: str | None = None, repo: Path = Path(".")) -> tuple[Path, dict]:
    """Write the remote into ``repo/.dvc/config.local`` as the default remote (replacing an earlier one);
    return the file and the remote's whole section (with keys set there by hand, e.g. credentials)."""
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
            kept = {k: v for k, v in conf["remote"].get(NAME, {}).items() if k in KEPT}
            if kept and not url.startswith("s3://"):
                kept = {}
            conf["remote"][NAME] = {**kept, **section}
            conf["core"]["remote"] = NAME
            section = dict(conf["remote"][NAME])
    except ConfigError as exc:
        raise RemoteError(redact.text(str(exc))) from None
    local.chmod(0o600)
    return local, section


def check_s3(repo: Path = Path("."), timeout_s: float = 5) -> None:
    """List the remote's prefix once, through the S3 filesystem ``dvc push`` builds for it (DVC's own reading
    of the remote's keys, ``profile``, ``credentialpath``, ``configpath``, ``region``, ``endpointurl`` ..., else
    the AWS variables), so that a wrong key, a missing bucket or an unreachable endpoint is one line now, within
    seconds, rather than at the first push. Only the waiting is the check's own: ``timeout_s``, two attempts."""
    import botocore.exceptions  # noqa: PLC0415 - botocore comes with dvc-s3; only S3 remotes need it
    from dvc.exceptions import DvcException  # noqa: PLC0415 - DVC's import is slow; only this command needs it
    from dvc.repo import Repo  # noqa: PLC0415

    try:
        with Repo(str(repo)) as dvc_repo:
            section = dvc_repo.config["remote"][NAME]
            remote = dvc_repo.cloud.get_remote(NAME)
    except DvcException as exc:
        raise RemoteError(redact.text(str(exc))) from None
    url, endpoint = section["url"], section.get("endpointurl")
    where = f"{url} (endpoint {redact.uri(endpoint)})" if endpoint else url
    # Before the filesystem connects: it is made from these arguments on first use.
    remote.fs.fs_args.setdefault("config_kwargs", {}).update(
        connect_timeout=timeout_s, read_timeout=timeout_s, retries={"max_attempts": 2, "mode": "standard"}
    )
    bucket, _, prefix = remote.path.partition("/")
    try:
        remote.fs.fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=prefix, MaxKeys=1)
    except (ValueError, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError) as exc:
        raise RemoteError(redact.text(f"{where}: {s3.reason(exc)}")) from None


def check_directory(path: str) -> None:
    """A directory remote must exist and be writable here, checked before anything is written: ``dvc push``
    would fail on it later (a typo, an unmounted share), and the remote set before (its keys too) would be gone."""
    if not os.path.isdir(path):
        raise RemoteError(f"{path}: no such directory: create it (mkdir -p), or mount the shared one")
    if not os.access(path, os.W_OK | os.X_OK):
        raise RemoteError(f"{path}: not writable by this user: dvc push needs to write there")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", help="s3://bucket/path or a directory (default: $REMOTE)")
    parser.add_argument("--endpoint", help="S3-compatible endpoint, e.g. https://minio.example.com ($ENDPOINT)")
    parser.add_argument("--no-check", action="store_true", help="do not try the remote's credentials now")
    args = parser.parse_args(argv)
    url = args.url or os.environ.get("REMOTE", "")
    endpoint = args.endpoint or os.environ.get("ENDPOINT") or None
    try:
        if url and "://" not in url and not args.no_check:  # before writing: a typo keeps the remote set before
            check_directory(remote_config(url)["url"])
        path, section = configure(url, endpoint)
    except RemoteError as exc:
        print(f"remote: error: {redact.text(str(exc))}", file=sys.stderr)
        return 2
    where = f" (endpoint {redact.uri(endpoint)})" if endpoint else ""
    print(f"remote: {NAME} = {redact.uri(section['url'])}{where}, the default remote, in {path}")
    if not args.no_check:
        try:
            if section["url"].startswith("s3://"):
                check_s3()
        except RemoteError as exc:
            print(f"remote: error: {redact.text(str(exc))}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
