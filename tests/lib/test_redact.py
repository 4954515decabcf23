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


# Characters RFC 3986 allows in user-info (sub-delims, ":", pct-encoded) and a few it does not but passwords hold.
USERINFO_CHARS = ["(", ")", "'", '"', "%22", "%27", "%28", "!", "$", ";", "=", "*", ",", "+", "%40", ":", "&", "[", "]"]
# Around a URI in a message: bare, in parentheses, quotes, brackets, at the end of a sentence.
WRAPPERS = ["{}", "({})", "'{}'", '"{}"', "[{}]", "<{}>", "failed for {}.", "failed ({}); retrying", "url='{}',"]


@pytest.mark.parametrize("char", USERINFO_CHARS)
@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_text_masks_userinfo_whatever_it_holds(char, wrapper):
    """Both halves of the password around the odd character are gone; the host and path stay."""
    url = f"http://alice:Zq1{char}Xk9@host:5000/api/x"
    out = redact.text(wrapper.format(url), environ={})
    assert "Zq1" not in out and "Xk9" not in out and "alice" not in out, out
    assert "***@host:5000/api/x" in out, out


@pytest.mark.parametrize("char", USERINFO_CHARS)
def test_uri_masks_userinfo_whatever_it_holds(char):
    in_query = "%26" if char == "&" else char  # a raw "&" ends a query value
    out = redact.uri(f"https://alice:Zq1{char}Xk9@host/x?token=Tq1{in_query}Tk9&page=2")
    assert "Zq1" not in out and "Xk9" not in out and "Tq1" not in out and "Tk9" not in out, out
    assert out.startswith("https://***@host/x?token=***") and out.endswith("&page=2"), out


@pytest.mark.parametrize("char", [c for c in USERINFO_CHARS if c != "&"])
@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_text_masks_secret_query_values_whatever_they_hold(char, wrapper):
    url = f"https://host/x?page=2&token=Tq1{char}Tk9"
    out = redact.text(wrapper.format(url), environ={})
    assert "Tq1" not in out and "Tk9" not in out, out
    assert "https://host/x?page=2&token=***" in out, out


@pytest.mark.parametrize(
    ("message", "secret", "shown"),
    [
        ("failed (http://u:p(1)@h/x)", "p(1)", "failed (http://***@h/x)"),
        ("'https://tok@h/r'", "tok", "'https://***@h/r'"),
        ('remote "https://TOKEN\'x@github.com/o/r.git" rejected', "TOKEN", '"https://***@github.com/o/r.git" rejected'),
        ("see (https://h/x?token=ab(c)d) now", "ab(c)d", "(https://h/x?token=***) now"),
        ("http://a:1@h1/ and http://b:2@h2/", "a:1", "http://***@h1/ and http://***@h2/"),
        ("http://h/?next=http://u:pw@h2/?token=nested", "nested", "?next=http://***@h2/?token=***"),
        ("http://h/cb#access_token=frag&x=1", "frag", "#access_token=***&x=1"),
        # requests names the path and query without the scheme: "Max retries exceeded with url: /x?token=…"
        ("Max retries exceeded with url: /x?token=abc123 (Caused by X)", "abc123", "url: /x?token=*** (Caused by X)"),
    ],
)
def test_text_masks_uris_inside_sentences(message, secret, shown):
    out = redact.text(message, environ={})
    assert secret not in out and shown in out, out


def test_uri_keeps_other_query_values_verbatim():
    assert redact.uri("https://h/x?token=abc&page=a%26b+c&q") == "https://h/x?token=***&page=a%26b+c&q"


def test_text_masks_a_secret_environment_uris_password_whatever_it_holds():
    environ = {"MLFLOW_TRACKING_URI": "http://u:pw[x(y@tracking:5000"}
    out = redact.text("login to tracking:5000 with password pw[x(y failed", environ)
    assert "pw[x(y" not in out and "tracking:5000" in out, out


def test_params_redacts_uris_in_values_and_leaves_the_rest():
    given = {
        "fetch.keras_url": "https://user:pw@host/mnist.npz?token=abc",
        "fetch.kaggle_url": "https://www.kaggle.com/api/v1",
        "fetch.sources": ["keras", "https://u:pw2@h/x"],
        "fetch.mirror": {"url": "https://u:pw3@m/x", "tried": ("https://u:pw4@n/y", 2)},
        "train.epochs": 10,
        "model.activation": "relu",
    }
    out = redact.params(given)
    assert out == {
        "fetch.keras_url": "https://***@host/mnist.npz?token=***",
        "fetch.kaggle_url": "https://www.kaggle.com/api/v1",
        "fetch.sources": ["keras", "https://***@h/x"],
        "fetch.mirror": {"url": "https://***@m/x", "tried": ("https://***@n/y", 2)},
        "train.epochs": 10,
        "model.activation": "relu",
    }
    assert given["fetch.keras_url"] == "https://user:pw@host/mnist.npz?token=abc"  # a copy: the input is untouched
