"""stages.lib.net: which addresses are this machine only, and the URL a local client opens."""

from __future__ import annotations

import pytest

from stages.lib import net


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.1.1", "::1", "[::1]", "localhost"])
def test_loopback(host):
    assert net.is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "10.0.0.5", "example.org", "[fd00::1]", ""])
def test_not_loopback(host):
    assert not net.is_loopback(host)


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("0.0.0.0", "http://127.0.0.1:7860"),
        ("::", "http://127.0.0.1:7860"),
        ("127.0.0.1", "http://127.0.0.1:7860"),
        ("::1", "http://[::1]:7860"),
        ("[::1]", "http://[::1]:7860"),
        ("mlflow.lan", "http://mlflow.lan:7860"),
    ],
)
def test_local_url(host, url):
    assert net.local_url(host, 7860) == url
