"""Why an S3 request failed, in one line, for make remote and make server (stages.lib.s3)."""

import botocore.exceptions
import pytest

from stages.lib import s3

DENIED = {"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}


def from_s3fs(answer: Exception) -> OSError:
    """What s3fs raises for S3's answer: an OSError, from it."""
    try:
        raise PermissionError("Access Denied") from answer
    except PermissionError as exc:
        return exc


@pytest.mark.parametrize(
    "exc, said",
    [
        (ValueError("Invalid endpoint: http://alice:s3cret@bad_host:9000"), s3.INVALID_ENDPOINT),
        (botocore.exceptions.NoCredentialsError(), "no credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or"),
        (botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), "could not connect to the"),
        (
            botocore.exceptions.ConnectTimeoutError(endpoint_url="http://bob:pw-s3cret@10.0.0.1:9000"),
            'Connect timeout on endpoint URL: "http://***@10.0.0.1:9000"',
        ),
        (botocore.exceptions.ClientError(DENIED, "ListObjectsV2"), "AccessDenied: Access Denied"),
        (from_s3fs(botocore.exceptions.ClientError(DENIED, "ListObjectsV2")), "AccessDenied: Access Denied"),
        (OSError("disk full"), "disk full"),
        (botocore.exceptions.InvalidRegionError(region_name="eu west 1"), "Provided region_name 'eu west 1' doesn't"),
    ],
)
def test_each_failure_is_one_line_that_says_which_and_holds_no_secret(exc, said):
    line = s3.reason(exc)
    assert line.startswith(said) and "\n" not in line and "s3cret" not in line, line
