"""Addresses the servers listen on: which are this machine only, and the URL a local client opens."""

from __future__ import annotations

import ipaddress

EVERY_ADDRESS = ("0.0.0.0", "::")  # listening on every interface; clients here use loopback


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name, an IPv4 or IPv6 address, bracketed or not) reaches this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def local_url(host: str, port: int) -> str:
    """The ``http://`` URL a client on this machine opens for a server listening on ``host``:``port``."""
    if host in EVERY_ADDRESS:
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address in a URL
    return f"http://{host}:{port}"
