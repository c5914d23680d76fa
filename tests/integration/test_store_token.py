"""store.token against a real Chroma server behind a real authenticating proxy.

`chroma run` (Chroma 1.x) accepts every request: its server-side token check is a no-op
(chroma-core/chroma#4965). Deployments that want one put a reverse proxy in front that
checks the header Chroma's token authentication uses; this test runs such a proxy (an
http.server forwarding to the real `chroma run`), so the token really is required.
"""

from __future__ import annotations

import http.client
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from daemon.config import Config
from daemon.errors import StoreUnavailable
from daemon.store.chroma import Store
from tests.servers import ChromaServer

TOKEN = "tok-3141592653"


def proxy_to(port: int, expect: dict[str, str]) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if any(self.headers.get(k) != v for k, v in expect.items()):
                self.reply(401, b'{"error":"Unauthorized"}', [("Content-Type", "application/json")])
                return
            upstream = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            skip = {"host", "connection", *(k.lower() for k in expect)}
            headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
            upstream.request(self.command, self.path, body=body or None, headers=headers)
            resp = upstream.getresponse()
            data = resp.read()
            upstream.close()
            hop = {"transfer-encoding", "connection", "content-length"}
            self.reply(
                resp.status, data, [(k, v) for k, v in resp.getheaders() if k.lower() not in hop]
            )

        def reply(self, status: int, data: bytes, headers: list[tuple[str, str]]) -> None:
            self.send_response(status)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = forward

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def chroma(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    server = ChromaServer(tmp_path_factory.mktemp("chroma"))
    try:
        yield server.start()
    finally:
        server.stop()


def store(tmp: Path, url: str, **store_cfg: object) -> Store:
    return Store(Config.model_validate({"data_dir": str(tmp), "store": {"url": url, **store_cfg}}))


@pytest.mark.parametrize(
    ("header", "expect"),
    [
        ("Authorization", {"Authorization": f"Bearer {TOKEN}"}),
        ("X-Chroma-Token", {"X-Chroma-Token": TOKEN}),
    ],
)
def test_the_token_opens_a_server_that_requires_it(
    tmp_path: Path, chroma: ChromaServer, header: str, expect: dict[str, str]
) -> None:
    proxy = proxy_to(chroma.port, expect)
    url = f"http://127.0.0.1:{proxy.server_address[1]}"
    try:
        s = store(tmp_path, url, token=TOKEN, token_header=header)
        s.open_images("tiny", 4)
        s.upsert_images([f"{header}-a"], np.ones((1, 4), np.float32), [{"path": "/p/a.jpg"}])
        assert s.image_ids_present([f"{header}-a"]) == {f"{header}-a"}

        for wrong in ({}, {"token": "not-it", "token_header": header}):
            with pytest.raises(StoreUnavailable) as refused:
                store(tmp_path, url, **wrong)
            assert "Unauthorized" in refused.value.message
            assert "store.token" in refused.value.hint
            assert TOKEN not in str(refused.value)
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_the_token_is_never_shown(tmp_path: Path) -> None:
    cfg = Config.model_validate({"store": {"url": "http://127.0.0.1:9", "token": TOKEN}})
    assert TOKEN not in repr(cfg) and TOKEN not in cfg.model_dump_json()
    assert cfg.store.token is not None and cfg.store.token.get_secret_value() == TOKEN
