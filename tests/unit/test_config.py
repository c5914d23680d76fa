"""Config: one validated model; errors name the key and the bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import load_config
from daemon.errors import Code, ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_shipped_config_yaml_is_valid_and_equals_the_defaults(tmp_path: Path) -> None:
    shipped = load_config(REPO / "config.yaml", environ={})
    empty = tmp_path / "config.yaml"
    empty.write_text("")
    defaults = load_config(empty, environ={})
    # Same settings; only the base directory of relative paths differs.
    relative = {"inbox_dir", "data_dir", "status_dir", "faces", "models"}
    assert shipped.model_dump(exclude=relative) == defaults.model_dump(exclude=relative)
    assert shipped.models.model_dump(exclude={"dir"}) == defaults.models.model_dump(exclude={"dir"})
    assert shipped.models.dir == str(REPO / "models")
    assert defaults.models.dir == str(tmp_path / "models")
    assert shipped.inbox_dir == REPO / "inbox"
    assert shipped.status_path == REPO / "status" / "training_status.json"


def test_unknown_key_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("inbox:\n  settle_secs: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(cfg, environ={})
    assert err.value.code == Code.CONFIG_INVALID
    assert "inbox.settle_secs: unknown key" in err.value.message


def test_bad_value_names_key_and_value(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("clip:\n  batch_size: lots\n")
    with pytest.raises(ConfigError) as err:
        load_config(cfg, environ={})
    assert "clip.batch_size" in err.value.message
    assert "'lots'" in err.value.message


def test_environment_overrides_with_prefix(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("clip:\n  batch_size: 8\n")
    env = {
        "IMGTRAIN_CLIP__BATCH_SIZE": "16",
        "IMGTRAIN_INBOX__POLLING": "true",
        "IMGTRAIN_INBOX_DIR": "/srv/photos/inbox",
    }
    c = load_config(cfg, environ=env)
    assert c.clip.batch_size == 16
    assert c.inbox.polling is True
    assert c.inbox_dir == Path("/srv/photos/inbox")


def test_config_file_from_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "elsewhere.yaml"
    cfg.write_text("data_dir: lib\n")
    c = load_config(None, environ={"IMGTRAIN_CONFIG": str(cfg)})
    assert c.data_dir == tmp_path / "lib"  # relative to the config file, not the cwd


def test_missing_explicit_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml", environ={})


def test_threshold_order_is_checked(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("clustering:\n  assign_threshold: 0.3\n  suggest_threshold: 0.6\n")
    with pytest.raises(ConfigError, match="suggest_threshold"):
        load_config(cfg, environ={})


def test_clustering_needs_faces(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("phases: [embedding, clustering]\n")
    with pytest.raises(ConfigError, match="clustering needs faces"):
        load_config(cfg, environ={})


def test_environment_lists_are_json_and_null_is_none() -> None:
    env = {"IMGTRAIN_PHASES": '["embedding"]', "IMGTRAIN_CLIP__CACHE_DIR": "null"}
    c = load_config(None, environ=env)
    assert c.phases == ["embedding"]
    assert c.clip.cache_dir is None


def test_unknown_environment_key_is_named() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, environ={"IMGTRAIN_CLIP__BATCH": "16"})
    assert "IMGTRAIN_CLIP__BATCH" in err.value.message
    assert "unknown key" in err.value.message


def test_bad_environment_value_names_key_and_value() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, environ={"IMGTRAIN_CLIP__BATCH_SIZE": "lots"})
    assert "clip.batch_size" in err.value.message
    assert "'lots'" in err.value.message


def test_link_roots_and_limits(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("inbox:\n  link_roots: [nas, /mnt/photos, ~/pictures]\n  max_depth: 8\n")
    c = load_config(cfg, environ={})
    assert c.inbox.link_roots == [tmp_path / "nas", Path("/mnt/photos"), Path.home() / "pictures"]
    assert c.inbox.max_depth == 8
    (tmp_path / "empty.yaml").write_text("")
    defaults = load_config(tmp_path / "empty.yaml", environ={}).inbox
    assert defaults.link_roots == []  # no link is followed until the owner says where
    assert (defaults.max_files_per_batch, defaults.max_batch_bytes) == (200_000, 2 * 10**12)
    cfg.write_text("inbox:\n  max_files_per_batch: 0\n")
    with pytest.raises(ConfigError) as err:
        load_config(cfg, environ={})
    assert "inbox.max_files_per_batch" in err.value.message and "(got 0)" in err.value.message


def test_a_password_in_a_url_never_reaches_a_config_error(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("store:\n  url: [http://imgtrain:hunter2@chroma:8000]\n")  # a list: invalid
    with pytest.raises(ConfigError) as err:
        load_config(cfg, environ={})
    assert "store.url" in err.value.message
    assert "hunter2" not in str(err.value) and "http://***@chroma:8000" in err.value.message


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("http://user:pw@host:8000", "http://***@host:8000"),
        ("cannot reach https://token@h/ now", "cannot reach https://***@h/ now"),
        ("redis://:pw@r:6379/0 and http://a:b@c", "redis://***@r:6379/0 and http://***@c"),
        ("mail me: someone@example.org", "mail me: someone@example.org"),
        ("http://host:8000/path?who=a@b", "http://host:8000/path?who=a@b"),
    ],
)
def test_redact_blanks_the_user_part_of_urls(text: str, shown: str) -> None:
    from daemon.redact import redact

    assert redact(text) == shown
