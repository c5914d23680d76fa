"""Keep secrets out of everything the daemon shows: the log, the status file, --json.

Today the only secret a config can hold is the password in a URL's user
part (`store.url: http://user:password@host:8000`). `redact` blanks it
wherever such a URL appears in a text, so a message that quotes a URL (an
error naming the server it could not reach) is safe to print as it is.
"""

from __future__ import annotations

import re

# scheme://user:password@ or scheme://token@ ; the user part ends at the first "@"
# before any "/", so an "@" later in a path or query is left alone.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#@\s]+)@")
MASK = "***"


def redact(text: str) -> str:
    """`text` with the user part of every URL in it replaced by ***."""
    if "@" not in text:  # the common case, and the status file is written often
        return text
    return _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
