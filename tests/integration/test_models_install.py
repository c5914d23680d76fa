"""`imgtrain models`: list, import and download, on real model files.

The face models are the real ones in ../shared/models/faces (as a pack folder
and as a zip laid out like insightface's); CLIP is the tiny architecture with
its weights saved to a file, loaded through open_clip like any checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import threading
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from daemon.cli import main
from daemon.config import load_config
from daemon.models import ClipModel, inventory
from tests.conftest import REPO, TINY_CLIP, base_config, save_tiny_clip_weights, write_config

SHARED_SHA = {"det_2.5g.onnx": "041f73f47371", "mobilefacenet_128.onnx": "e72a5710cce3"}


def _config(tmp: Path, tiny_clip: Path, *, clip: dict | None = None, faces: dict | None = None):
    cfg = base_config(tmp, tiny_clip, tmp / "unused")
    cfg["faces"] = {
        "model_root": str(tmp / "insightface"),
        "model_pack": "testpack",
        "download": False,
        "threads": 1,
        **(faces or {}),
    }
    cfg["clip"].update(clip or {})
    return write_config(tmp / "config.yaml", cfg)


def _models(capsys: pytest.CaptureFixture[str], cfg: Path, *argv: str) -> tuple[int, dict]:
    code = main(["models", *argv, "--json", "-c", str(cfg)])
    return code, json.loads(capsys.readouterr().out)


def _by_role(data: dict) -> dict[str, dict]:
    return {m["role"]: m for m in data["models"]}


def _sha12(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*")) if folder.exists() else []


@pytest.fixture(scope="module")
def pack_zip(face_pack: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared pack as insightface ships packs: a zip with the .onnx files in a folder."""
    path = tmp_path_factory.mktemp("zips") / "testpack.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for f in sorted(face_pack.iterdir()):
            zf.write(f.resolve(), f"testpack/{f.name}")
    return path


@pytest.fixture(scope="module")
def other_width_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights of a tiny architecture whose text tower is narrower (open_clip asserts on it)."""
    root = tmp_path_factory.mktemp("narrow")
    arch = root / "arch" / "imgtrain-tiny.json"
    arch.parent.mkdir()
    arch.write_text(json.dumps({**TINY_CLIP, "text_cfg": {**TINY_CLIP["text_cfg"], "width": 32}}))
    return save_tiny_clip_weights(root / "narrow.pt", arch)


@pytest.fixture(scope="module")
def wrong_dim_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights of the tiny architecture with 16-d embeddings, where the config's gives 32."""
    root = tmp_path_factory.mktemp("wrong")
    arch = root / "arch" / "imgtrain-tiny.json"
    arch.parent.mkdir()
    arch.write_text(json.dumps({**TINY_CLIP, "embed_dim": 16}))
    return save_tiny_clip_weights(root / "tiny16.pt", arch)


def test_a_fresh_setup_lists_each_model_missing_with_where_it_goes(
    tmp_path, capsys, tiny_clip_config
) -> None:
    weights = tmp_path / "weights" / "tiny.pt"
    cfg = _config(tmp_path, tiny_clip_config, clip={"pretrained": str(weights)})
    code, data = _models(capsys, cfg)
    assert code == 1 and data["ok"] is False
    models = _by_role(data)
    assert set(models) == {"CLIP", "face detector", "face recognizer"}
    assert all(m["state"] == "missing" for m in models.values())
    assert models["CLIP"]["path"] == str(weights)
    pack = tmp_path / "insightface" / "models" / "testpack"
    assert models["face detector"]["path"].startswith(str(pack))
    assert main(["models", "-c", str(cfg)]) == 1
    text = capsys.readouterr().out
    assert "missing" in text and "models import PATH" in text
    assert "models download" not in text  # a local file and an unpublished pack: nothing to fetch


def test_a_pack_folder_then_a_zip_go_where_the_config_looks(
    tmp_path, capsys, tiny_clip_config, face_pack, pack_zip
) -> None:
    cfg = _config(tmp_path, tiny_clip_config)
    pack = tmp_path / "insightface" / "models" / "testpack"
    assert main(["models", "import", str(face_pack), "-c", str(cfg)]) == 0
    assert f"installed face pack testpack: {pack}" in capsys.readouterr().out
    assert sorted(p.name for p in pack.iterdir()) == sorted(SHARED_SHA)
    code, data = _models(capsys, cfg)
    assert code == 0 and data["ok"]
    models = _by_role(data)
    assert models["face detector"]["sha256"] == SHARED_SHA["det_2.5g.onnx"]
    assert models["face recognizer"]["sha256"] == SHARED_SHA["mobilefacenet_128.onnx"]
    assert models["face recognizer"]["dim"] == 128
    assert (
        models["face recognizer"]["size"] == (face_pack / "mobilefacenet_128.onnx").stat().st_size
    )

    # An installed pack is replaced only when asked, and then whole.
    assert main(["models", "import", str(pack_zip), "-c", str(cfg)]) == 1
    assert "INVALID_STATE" in capsys.readouterr().err
    assert main(["models", "import", str(pack_zip), "--replace", "-c", str(cfg)]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in pack.iterdir()) == sorted(SHARED_SHA)
    assert _leftovers(tmp_path / "insightface") == []


def test_a_pack_that_is_not_the_named_one_goes_beside_with_the_config_line(
    tmp_path, capsys, tiny_clip_config, pack_zip
) -> None:
    """buffalo_l's recognizer gives 512-d vectors; a 128-d pack under its name would lie."""
    cfg = _config(tmp_path, tiny_clip_config, faces={"model_pack": "buffalo_l"})
    assert main(["models", "import", str(pack_zip), "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    dest = tmp_path / "models" / "faces" / "testpack"
    assert f"faces.model_dir: {dest}" in out
    assert sorted(p.name for p in dest.iterdir()) == sorted(SHARED_SHA)
    assert not list((tmp_path / "insightface").rglob("*.onnx"))


def test_clip_weights_go_to_the_file_the_config_names(
    tmp_path, capsys, tiny_clip_config, tiny_clip_weights
) -> None:
    dest = tmp_path / "weights" / "tiny.pt"
    cfg = _config(tmp_path, tiny_clip_config, clip={"pretrained": str(dest)})
    assert main(["models", "import", str(tiny_clip_weights), "-c", str(cfg)]) == 0
    assert "dim 32" in capsys.readouterr().out
    assert dest.read_bytes() == tiny_clip_weights.read_bytes()
    _, data = _models(capsys, cfg)
    clip = _by_role(data)["CLIP"]
    assert clip["state"] == "present" and clip["dim"] == 32
    assert clip["sha256"] == _sha12(tiny_clip_weights) and clip["path"] == str(dest)


def test_clip_weights_for_a_tag_go_to_models_dir_and_load_from_there(
    tmp_path, capsys, tiny_clip_config, tiny_clip_weights, monkeypatch
) -> None:
    """A tag is what the default config uses. open_clip has no API to add a tag, so one is
    registered for the tiny architecture in its table (test only); its hub repository does
    not exist, so the weights can come only from the imported file."""
    import open_clip
    from open_clip import pretrained

    monkeypatch.setitem(
        pretrained._PRETRAINED, "imgtrain-tiny", {"testtag": {"hf_hub": "imgtrain/no-such-repo/"}}
    )
    assert open_clip.get_pretrained_cfg("imgtrain-tiny", "testtag")
    cfg = _config(tmp_path, tiny_clip_config, clip={"pretrained": "testtag"})
    models_dir = tmp_path / "models"
    _, data = _models(capsys, cfg)
    assert _by_role(data)["CLIP"]["state"] == "missing"
    assert _by_role(data)["CLIP"]["path"] == f"{models_dir}/clip/imgtrain-tiny/"
    assert main(["models", "import", str(tiny_clip_weights), "-c", str(cfg)]) == 0
    assert "installed CLIP imgtrain-tiny/testtag" in capsys.readouterr().out
    slot = models_dir / "clip" / "imgtrain-tiny" / "testtag.pt"
    assert slot.read_bytes() == tiny_clip_weights.read_bytes()
    model = ClipModel(load_config(cfg).clip, models_dir=load_config(cfg).models.dir)
    model.load()
    assert model.weights_file == str(slot) and model.model_name == "imgtrain-tiny/testtag"
    _, data = _models(capsys, cfg)
    clip = _by_role(data)["CLIP"]
    assert clip["state"] == "present" and clip["path"] == str(slot) and clip["dim"] == 32


def test_clip_weights_with_random_weights_configured_print_the_line(
    tmp_path, capsys, tiny_clip_config, tiny_clip_weights
) -> None:
    cfg = _config(tmp_path, tiny_clip_config)  # clip.pretrained: none
    assert main(["models", "import", str(tiny_clip_weights), "-c", str(cfg)]) == 0
    dest = tmp_path / "models" / "clip" / "imgtrain-tiny" / "tiny.pt"
    assert f"clip.pretrained: {dest}" in capsys.readouterr().out
    assert dest.is_file()


def test_corrupt_and_wrong_dimension_files_are_unloadable_with_the_reason(
    tmp_path, capsys, tiny_clip_config, wrong_dim_weights, shared
) -> None:
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"the first bytes of an interrupted copy")
    cfg = _config(tmp_path, tiny_clip_config, clip={"pretrained": str(corrupt)})
    code, data = _models(capsys, cfg)
    clip = _by_role(data)["CLIP"]
    assert code == 1 and clip["state"] == "unloadable"
    assert str(corrupt) in clip["reason"] and clip["sha256"] == _sha12(corrupt)

    cfg = _config(tmp_path, tiny_clip_config, clip={"pretrained": str(wrong_dim_weights)})
    _, data = _models(capsys, cfg)
    clip = _by_role(data)["CLIP"]
    assert clip["state"] == "unloadable" and "size mismatch" in clip["reason"]

    pack = tmp_path / "insightface" / "models" / "testpack"
    pack.mkdir(parents=True)
    (pack / "det_2.5g.onnx").write_bytes(b"interrupted download")
    shutil.copy(shared / "models" / "faces" / "mobilefacenet_128.onnx", pack)
    _, data = _models(capsys, cfg)
    det = _by_role(data)["face detector"]
    assert det["state"] == "unloadable" and str(pack / "det_2.5g.onnx") in det["reason"]
    assert _by_role(data)["face recognizer"]["state"] == "present"


def test_import_refuses_what_does_not_load_and_leaves_nothing_behind(
    tmp_path, capsys, tiny_clip_config, wrong_dim_weights, other_width_weights, shared
) -> None:
    dest = tmp_path / "weights" / "tiny.pt"
    cfg = _config(tmp_path, tiny_clip_config, clip={"pretrained": str(dest)})
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x80\x02 not a checkpoint")
    assert main(["models", "import", str(corrupt), "-c", str(cfg)]) == 1
    assert "MODEL_INVALID" in capsys.readouterr().err
    assert main(["models", "import", str(wrong_dim_weights), "-c", str(cfg)]) == 1
    assert "size mismatch" in capsys.readouterr().err
    assert main(["models", "import", str(other_width_weights), "-c", str(cfg)]) == 1
    assert "MODEL_INVALID" in capsys.readouterr().err
    assert not dest.exists() and _leftovers(dest.parent) == []

    detector_only = tmp_path / "det-only.zip"
    with zipfile.ZipFile(detector_only, "w") as zf:
        zf.write(shared / "models" / "faces" / "det_500m.onnx", "det_500m.onnx")
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(detector_only.read_bytes()[:50_000])
    for bad, says in ((detector_only, "recognizer"), (truncated, "zip")):
        assert main(["models", "import", str(bad), "-c", str(cfg)]) == 1
        err = capsys.readouterr().err
        assert "MODEL_INVALID" in err and says in err
    models_root = tmp_path / "insightface" / "models"
    assert not list(models_root.rglob("*.onnx")) and _leftovers(models_root) == []


def test_download_without_internet_fails_fast_and_says_to_import(tmp_path) -> None:
    """The default models, in a network namespace with no network at all (unshare -n)."""
    unshare = shutil.which("unshare")
    assert unshare, "unshare (util-linux) is needed to take the network away"
    cfg = write_config(tmp_path / "config.yaml", {"faces": {"model_root": str(tmp_path / "if")}})
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [unshare, "-n", sys.executable, "-m", "daemon", "models", "download", "-c", str(cfg)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("imgtrain: MODEL_UNAVAILABLE: cannot reach"), done.stderr
    assert "huggingface.co" in lines[0] and "github.com" in lines[0]
    assert "models import PATH" in lines[0]
    assert len(lines) == 2 and lines[1].lstrip().startswith("->")  # what to do
    assert not (tmp_path / "if").exists() and not (tmp_path / ".cache").exists()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_download_fetches_a_missing_pack_with_insightfaces_downloader(
    tmp_path, capsys, tiny_clip_config, pack_zip, monkeypatch
) -> None:
    """GitHub cannot be reached from here, so a local HTTP server stands in for it: the
    pack URL is pointed at loopback (the one thing replaced); the reachability check,
    insightface's download_file with its progress bar and the install are the real ones."""
    served = tmp_path / "releases"
    served.mkdir()
    shutil.copy(pack_zip, served / "buffalo_l.zip")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=served))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{{pack}}.zip"
        monkeypatch.setattr(inventory, "PACK_URL", url)
        cfg = _config(tmp_path, tiny_clip_config, faces={"model_pack": "buffalo_l"})
        assert main(["models", "download", "-c", str(cfg)]) == 0
    finally:
        server.shutdown()
        server.server_close()
    out = capsys.readouterr().out
    size = f"{(served / 'buffalo_l.zip').stat().st_size / 2**20:.1f} MiB"
    assert f"downloading face pack buffalo_l ({size}) from {url.format(pack='buffalo_l')}" in out
    # Not really buffalo_l (128-d vectors, not 512): installed beside, with the line to set.
    dest = tmp_path / "models" / "faces" / "buffalo_l"
    assert f"faces.model_dir: {dest}" in out
    assert sorted(p.name for p in dest.iterdir()) == sorted(SHARED_SHA)
    assert _leftovers(tmp_path / "insightface") == [] and _leftovers(tmp_path / "models") == []
