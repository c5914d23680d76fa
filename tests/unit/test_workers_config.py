"""The workers' settings and the small rules both sides share: no servers needed."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from daemon.config import load_config
from daemon.errors import ConfigError
from daemon.redact import has_password, is_loopback, redact_url
from daemon.workers.connection import job_id, parse_job_id, warn_if_open
from daemon.workers.jobs import map_path


def config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_rq_without_a_chroma_server_is_refused_naming_both_keys(tmp_path: Path) -> None:
    cfg = config_file(tmp_path, "workers:\n  backend: rq\n")
    with pytest.raises(ConfigError) as err:
        load_config(cfg, environ={})
    assert "workers.backend" in err.value.message and "store.url" in err.value.message
    ok = config_file(tmp_path, "workers: {backend: rq}\nstore: {url: 'http://10.0.0.5:8000'}\n")
    assert load_config(ok, environ={}).workers.backend == "rq"


def test_a_bad_redis_url_is_named_without_its_password(tmp_path: Path) -> None:
    env = {"IMGTRAIN_WORKERS__REDIS_URL": "http://:hunter2@cache:6379/0"}
    with pytest.raises(ConfigError) as err:
        load_config(None, environ=env)
    assert "workers.redis_url" in err.value.message
    assert "hunter2" not in err.value.message and "***" in err.value.message


def test_a_check_across_keys_does_not_echo_the_config(tmp_path: Path) -> None:
    cfg = config_file(
        tmp_path,
        "workers: {backend: rq, redis_url: 'redis://:hunter2@cache:6379/0'}\nstore: {token: t0k}\n",
    )
    with pytest.raises(ConfigError) as err:
        load_config(cfg, environ={})
    assert "hunter2" not in err.value.message and "t0k" not in err.value.message


def test_queue_name_and_path_map_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"workers\.queue"):
        load_config(config_file(tmp_path, "workers: {queue: 'a b'}\n"), environ={})
    with pytest.raises(ConfigError, match="absolute"):
        load_config(config_file(tmp_path, "workers: {path_map: {data: /mnt/data}}\n"), environ={})
    env = {"IMGTRAIN_WORKERS__PATH_MAP": '{"/srv/imgtrain/": "/mnt/imgtrain/"}'}
    assert load_config(None, environ=env).workers.path_map == {"/srv/imgtrain": "/mnt/imgtrain"}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/srv/data/batches/000001-x/a.jpg", "/mnt/nas/batches/000001-x/a.jpg"),
        ("/srv/data/batches/000002-y/b.jpg", "/fast/000002-y/b.jpg"),  # the longest prefix wins
        ("/srv/database/c.jpg", "/srv/database/c.jpg"),  # a prefix ends at a path component
        ("/srv/data", "/mnt/nas"),
        ("/elsewhere/d.jpg", "/elsewhere/d.jpg"),
    ],
)
def test_map_path(path: str, expected: str) -> None:
    mapping = {"/srv/data": "/mnt/nas", "/srv/data/batches/000002-y": "/fast/000002-y"}
    assert map_path(path, mapping) == expected


def test_redaction_keeps_where_and_hides_who() -> None:
    assert redact_url("redis://:pw@cache.lan:6379/2") == "redis://***@cache.lan:6379/2"
    assert redact_url("rediss://default:pw@[::1]:6380/0") == "rediss://***@[::1]:6380/0"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert redact_url("http://user:pw@chroma:8000") == "http://***@chroma:8000"
    assert redact_url("redis://:pw@host:notaport/0") == "***"
    assert has_password("redis://:pw@h:1/0") and not has_password("redis://h:1/0")
    assert is_loopback("redis://localhost:6379") and is_loopback("redis://127.0.0.2:1")
    assert is_loopback("unix:///run/redis.sock") and is_loopback("redis://[::1]:6379")
    assert not is_loopback("redis://10.0.0.5:6379") and not is_loopback("redis://cache.lan")


def test_an_open_redis_elsewhere_is_warned_about_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def warned(url: str) -> bool:
        env = {"IMGTRAIN_WORKERS__REDIS_URL": url}
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            message = warn_if_open(load_config(None, environ=env).workers, "daemon")
        return message is not None and any(r.levelno == logging.WARNING for r in caplog.records)

    assert warned("redis://10.0.0.5:6379/0")
    assert "no password" in caplog.text and "10.0.0.5" in caplog.text
    assert not warned("redis://:pw@10.0.0.5:6379/0")
    assert not warned("redis://127.0.0.1:6379/0")
    assert "pw" not in caplog.text


def test_job_ids_are_deterministic_and_read_back() -> None:
    jid = job_id("imgtrain", 12, 3, 2)
    assert jid == "imgtrain-b12-c3-a2"
    assert parse_job_id("imgtrain", jid) == (12, 3, 2)
    assert parse_job_id("other", jid) is None
    assert parse_job_id("imgtrain", "imgtrain-b12-c3") is None
