"""One redaction for URIs and messages that may carry secrets."""

import pytest

from stages.lib import redact


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("http://alice:s3cret@host:5000", "http://***@host:5000"),
        ("https://TOKEN123@github.com/org/repo.git", "https://***@github.com/org/repo.git"),
        ("postgresql://mlflow:pw@127.0.0.1:5432/mlflow", "postgresql://***@127.0.0.1:5432/mlflow"),
        ("https://host/x?token=abc&page=2", "https://host/x?token=***&page=2"),
        ("s3://bucket/path?X-Amz-Signature=deadbeef", "s3://bucket/path?X-Amz-Signature=***"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
        ("/shared/dvc-store", "/shared/dvc-store"),
        ("http://alice:s3cret@host:99999999", "http://***@host:99999999"),  # unparsable port
    ],
)
def test_uri(given, shown):
    assert redact.uri(given) == shown


def test_text_masks_uris_and_secret_environment_values():
    environ = {
        "MLFLOW_TRACKING_PASSWORD": "hunter22",
        "MLFLOW_BACKEND_URI": "postgresql://u:dbpass99@db/mlflow",
        "KAGGLE_KEY": "abc",  # too short to mask safely: left alone
    }
    message = (
        "failed for http://alice:s3cret@host:5000/api (password hunter22); "
        "connection to db failed: password dbpass99 rejected; abc"
    )
    out = redact.text(message, environ)
    for secret in ("s3cret", "hunter22", "dbpass99"):
        assert secret not in out
    assert "http://***@host:5000/api" in out and out.endswith("; abc")
