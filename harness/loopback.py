"""The soak run and the benchmarks talk to services on this machine only."""

from __future__ import annotations

from urllib.parse import urlsplit

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def require_loopback(url_or_hosts: str, what: str, error: type[Exception]) -> None:
    """Raise ``error`` for any address of a URL or a host list that is not on loopback."""
    if "://" in url_or_hosts:
        hosts = [urlsplit(url_or_hosts).hostname or ""]
    else:
        hosts = [h.strip().rsplit(":", 1)[0].strip("[]") for h in url_or_hosts.split(",")]
    for host in hosts:
        if host not in LOOPBACK:
            raise error(f"{what} must be on loopback (127.0.0.1), not {host!r}")
