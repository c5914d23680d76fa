"""Keeping secrets out of what people and files see: URLs with passwords, tokens.

`workers.redis_url` may carry a password (`redis://:PASSWORD@host:6379/0`) and
`store.url` a user and password. Whatever imgtrain shows (the status file,
the log, `--json` output, error messages) goes through `redact_url`, which
keeps the scheme, host, port and database and replaces the credentials.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import SplitResult, urlsplit

HIDDEN = "***"


def redact_url(url: str | None) -> str:
    """The URL with any user and password replaced by ***; unparsable input is hidden whole."""
    if not url:
        return ""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError:
        return HIDDEN
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal goes back into brackets
        host = f"[{host}]"
    netloc = f"{HIDDEN}@{host}" + (f":{parts.port}" if parts.port else "")
    return SplitResult(parts.scheme, netloc, parts.path, parts.query, parts.fragment).geturl()


def has_password(url: str) -> bool:
    return bool(urlsplit(url).password)


def is_loopback(url: str) -> bool:
    """True for a unix socket or a loopback host (127.0.0.0/8, ::1, localhost)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return True
    host = (parts.hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
