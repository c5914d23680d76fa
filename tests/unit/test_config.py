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
