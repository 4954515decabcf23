"""S3 for `make remote` (DVC's storage) and `make server` (MLflow's artifacts): why a request failed, in one line.

botocore comes with dvc-s3 and with the server extra's boto3; it is imported
only when an S3 request has been made.
"""

from __future__ import annotations

from stages.lib import redact

INVALID_ENDPOINT = "not a valid endpoint URL (a host name has letters, digits, dots and hyphens only; IPv6 in [])"


def reason(exc: BaseException) -> str:
    """Why an S3 request failed, redacted, for after ``<bucket> (endpoint <url>): ``: an endpoint botocore
    refuses (its bare ``ValueError`` holds the raw URL, user-info and all), no credentials, no connection,
    botocore's own error, or S3's answer (a ``ClientError``, or the ``OSError`` s3fs raises from one)."""
    import botocore.exceptions  # noqa: PLC0415

    if isinstance(exc, ValueError) and not isinstance(exc, botocore.exceptions.BotoCoreError):
        return INVALID_ENDPOINT  # botocore's InvalidRegionError is a ValueError too: its own message below
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return "no credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile)"
    if isinstance(exc, botocore.exceptions.EndpointConnectionError):
        return "could not connect to the endpoint"
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return redact.text(str(exc))
    answer = exc if isinstance(exc, botocore.exceptions.ClientError) else exc.__cause__
    error = (getattr(answer, "response", None) or {}).get("Error", {})
    return redact.text(f"{error.get('Code')}: {error.get('Message')}" if error else str(exc) or type(exc).__name__)
