"""Keep secrets out of everything imgtrain shows: the log, the status file, --json, errors.

A config can hold secrets in URLs (`store.url: http://user:password@host:8000`,
`workers.redis_url: redis://:PASSWORD@host:6379/0`) and in `store.token`.
`redact` blanks the user part of every URL inside a text, so a message that
quotes a URL is safe to print as it is; `redact_url` shows one URL with its
credentials replaced, keeping scheme, host, port and database.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import SplitResult, urlsplit

# scheme://user:password@ or scheme://token@ ; the user part ends at the first "@"
# before any "/", so an "@" later in a path or query is left alone.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#@\s]+)@")
MASK = "***"
HIDDEN = MASK


def redact(text: str) -> str:
    """`text` with the user part of every URL in it replaced by ***."""
    if "@" not in text:  # the common case, and the status file is written often
        return text
    return _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)


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
