"""Can the model hubs be reached? Asked once before a download, in seconds, not minutes.

A machine without internet must hear so at once (and be told to use `imgtrain
models import`), not after a resolver or a TCP connect has hung for minutes.
"""

from __future__ import annotations

import re
import threading
from urllib.parse import urlsplit

PROBE_SECONDS = 5.0  # the most one reachability check may take, DNS included


def short_reason(text: str, limit: int = 300) -> str:
    """A loader's message on one line, cut where it stops being useful to a person."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def unreachable(urls: set[str], timeout: float = PROBE_SECONDS) -> dict[str, str]:
    """{url: why} for each URL whose server does not answer within `timeout`.

    Any HTTP answer counts as reachable. Each check runs in its own thread, so
    a resolver that hangs costs `timeout` at most, once, whatever the count.
    """
    import requests

    failed: dict[str, str] = {}

    def probe(url: str) -> None:
        try:
            requests.head(url, timeout=timeout, allow_redirects=False)
        except requests.RequestException as exc:
            failed[url] = network_reason(exc)

    threads = {url: threading.Thread(target=probe, args=(url,), daemon=True) for url in urls}
    for thread in threads.values():
        thread.start()
    for url, thread in threads.items():
        thread.join(timeout + 0.5)
        if thread.is_alive():
            failed[url] = f"no answer within {timeout:g} s"
    return failed


def network_reason(exc: BaseException) -> str:
    """The part of a requests/urllib3 error a person needs: '[Errno -2] Name or service...'."""
    text = str(exc)
    found = re.findall(r"\[Errno -?\d+\] [^'\")\]]+", text)
    if found:
        return found[-1].strip()
    if "timed out" in text.lower():
        return "timed out"
    return short_reason(text, 120)


def host(url: str) -> str:
    return urlsplit(url).hostname or url
