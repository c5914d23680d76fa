"""Putting models where the config looks: `imgtrain models import` and `imgtrain models download`.

Nothing is ever half-installed. A file or pack is copied (or downloaded) to a
temporary name beside its destination, loaded from there and checked (it runs,
and gives the vector size its architecture or pack promises), and only then
renamed into place, so the daemon never sees a partial model. A CLIP weights
file for a tag goes to `<models.dir>/clip/<model>/<tag>.*`, where the loader
looks before the Hugging Face cache; a face pack goes to the pack directory
the config names. What does not fit the config (weights while
`clip.pretrained: none`, a pack that is not the named insightface pack) is
installed under `models.dir` and the one config line to set is returned.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.errors import InvalidState, ModelInvalid, ModelUnavailable, NotFound
from daemon.models.clip import ClipModel
from daemon.models.clip_weights import WEIGHT_SUFFIXES, looks_like_path, tag_slot
from daemon.models.faces import FaceAnalyzer
from daemon.models.inventory import (
    KNOWN_PACKS,
    MISSING,
    ModelEntry,
    clip_embed_dim,
    file_digest,
    locate,
    pack_dir,
)
from daemon.models.reach import host, short_reason, unreachable

if TYPE_CHECKING:
    from daemon.config import Config


@dataclass
class Installed:
    what: str  # "CLIP" or "face pack"
    name: str
    path: Path
    dim: int
    size: int
    sha256: str  # short, of the weights file or of the pack's recognizer
    config_line: str | None = None  # the line to set when the config does not look there yet


def import_model(config: Config, source: Path, *, replace: bool = False) -> Installed:
    """Install a CLIP weights file, or a face pack (a folder or a .zip of .onnx files)."""
    source = source.expanduser()
    if not source.exists():
        raise NotFound(f"{source} does not exist", hint="Pass the file or folder to import.")
    if source.is_dir() or source.suffix.lower() == ".zip":
        return import_face_pack(config, source, replace=replace)
    if source.name.lower().endswith(WEIGHT_SUFFIXES):
        return import_clip(config, source, replace=replace)
    raise ModelInvalid(
        f"{source} is neither CLIP weights ({', '.join(WEIGHT_SUFFIXES)}) nor a face pack",
        hint="Import a CLIP weights file, or a face pack as a folder or .zip of .onnx files.",
    )


# -- CLIP ----------------------------------------------------------------------------
def clip_destination(config: Config, source_name: str) -> tuple[Path, list[Path], str | None]:
    """Where imported CLIP weights go, the files they replace, and the config line to set
    when the config does not look there yet."""
    cfg = config.clip
    value = cfg.pretrained.strip()
    suffix = next(s for s in WEIGHT_SUFFIXES if source_name.lower().endswith(s))
    if looks_like_path(value):
        dest = Path(value).expanduser()
        return dest, [dest], None
    if value.lower() != "none":
        import open_clip

        if open_clip.get_pretrained_cfg(cfg.model, value):
            # The tag's slot: one file, whatever its format (.bin, .safetensors, ...).
            base = tag_slot(config.models.dir, cfg.model, value)
            return (
                base.with_name(base.name + suffix),
                [base.with_name(base.name + s) for s in WEIGHT_SUFFIXES],
                None,
            )
    stem = source_name[: -len(suffix)]
    dest = tag_slot(config.models.dir, cfg.model, stem).with_name(stem + suffix)
    return dest, [dest], f"clip.pretrained: {dest}"


def import_clip(config: Config, source: Path, *, replace: bool = False) -> Installed:
    cfg = config.clip
    dest, replaces, config_line = clip_destination(config, source.name)
    existing = [p for p in replaces if p.exists()]
    if existing and not replace:
        raise InvalidState(
            f"{existing[0]} is already installed",
            hint="Pass --replace to put the new file in its place (the old one stays until "
            "the new one has loaded).",
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.stem}.importing-{os.getpid()}{dest.suffix}")
    try:
        _copy_synced(source, tmp)
        model = ClipModel(cfg.model_copy(update={"pretrained": str(tmp)}))
        try:
            model.load()
        except ModelUnavailable as exc:
            message = short_reason(exc.message).replace(str(tmp), str(source))
            raise ModelInvalid(f"{source} does not load as CLIP {cfg.model}: {message}") from exc
        expected = clip_embed_dim(cfg.model)
        if expected and model.dim != expected:
            raise ModelInvalid(
                f"{source} gives {model.dim}-d vectors where {cfg.model} gives {expected}"
            )
        os.replace(tmp, dest)
        for other in existing:
            if other != dest:
                other.unlink(missing_ok=True)  # a .bin beside the new .safetensors, say
        _sync_dir(dest.parent)
    finally:
        tmp.unlink(missing_ok=True)
    size, sha = file_digest(dest)
    tag = cfg.pretrained if config_line is None and not looks_like_path(cfg.pretrained) else None
    name = f"{cfg.model}/{tag or dest.name}"
    return Installed("CLIP", name, dest, model.dim, size, sha, config_line)


# -- face packs ----------------------------------------------------------------------
def import_face_pack(
    config: Config, source: Path, *, replace: bool = False, label: str | None = None
) -> Installed:
    """Install a pack folder or zip; `label` names it if it has to go beside the others."""
    cfg = config.faces
    dest, config_line = pack_dir(cfg), None
    dest.parent.mkdir(parents=True, exist_ok=True)
    stage = dest.parent / f".{dest.name}.importing-{os.getpid()}"
    old: Path | None = None
    try:
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir()
        _unpack_onnx(source, stage)
        analyzer = FaceAnalyzer(cfg.model_copy(update={"model_dir": str(stage)}))
        try:
            analyzer.load()
        except ModelUnavailable as exc:
            message = short_reason(exc.message).replace(str(stage), str(source))
            raise ModelInvalid(f"{source} is not a usable face pack: {message}") from exc
        known = None if cfg.model_dir else KNOWN_PACKS.get(cfg.model_pack)
        if known and analyzer.dim != known[2]:
            # Not the pack the config names (its vectors differ): it goes beside the other
            # imports, and the config is pointed at it by hand.
            label = label or (source.stem if source.suffix.lower() == ".zip" else source.name)
            dest = Path(config.models.dir) / "faces" / label
            config_line = f"faces.model_dir: {dest}"
        if dest.is_dir() and any(dest.glob("*.onnx")) and not replace:
            raise InvalidState(
                f"{dest} already holds a face pack",
                hint="Pass --replace to put the new pack in its place (the old one stays "
                "until the new one has loaded).",
            )
        assert analyzer.files is not None
        recognizer = analyzer.files[1].name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if stage.parent != dest.parent:
            stage = Path(shutil.move(stage, dest.parent / stage.name))
        _sync_dir(stage)
        if dest.exists():
            old = dest.parent / f".{dest.name}.old-{os.getpid()}"
            os.rename(dest, old)  # kept until the new pack is in place
        os.rename(stage, dest)
        _sync_dir(dest.parent)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    size, sha = file_digest(dest / recognizer)
    label = dest.name if (cfg.model_dir or config_line) else cfg.model_pack
    return Installed("face pack", label, dest, analyzer.dim, size, sha, config_line)


def _unpack_onnx(source: Path, stage: Path) -> None:
    """Copy out the .onnx files of a pack folder or zip (at its top or in one folder)."""
    names: list[str] = []
    if source.is_dir():
        files = sorted(source.glob("*.onnx")) or sorted(source.glob("*/*.onnx"))
        for path in files:
            _copy_synced(path, stage / path.name)
            names.append(path.name)
    else:
        try:
            with zipfile.ZipFile(source) as zf:
                for info in zf.infolist():
                    name = Path(info.filename).name  # never a path from inside the zip
                    if info.is_dir() or not name.endswith(".onnx") or name.startswith("._"):
                        continue
                    if name in names:
                        raise ModelInvalid(f"{source} holds two files named {name}")
                    with zf.open(info) as src, (stage / name).open("wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                        dst.flush()
                        os.fsync(dst.fileno())
                    names.append(name)
        except zipfile.BadZipFile as exc:
            raise ModelInvalid(f"{source} is not a complete zip file: {exc}") from exc
    if not names:
        raise ModelInvalid(
            f"{source} holds no .onnx files",
            hint="A face pack is a folder or .zip with a detector (det_*.onnx) and a recognizer.",
        )


def _copy_synced(source: Path, dest: Path) -> None:
    with source.open("rb") as src, dest.open("wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.flush()
        os.fsync(dst.fileno())


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- downloading ---------------------------------------------------------------------
def download_models(
    config: Config, say: Callable[[str], None], command: str = "imgtrain"
) -> list[Installed]:
    """Fetch every missing model with the libraries' own downloaders; fail fast when offline.

    `command` is how the person runs imgtrain, for the commands the errors name."""
    missing = [e for e in locate(config) if e.state == MISSING]
    if not missing:
        return []
    local = [e for e in missing if not e.source]
    if local:
        raise ModelUnavailable(
            f"{local[0].role} {local[0].name} has no download source: the config names a "
            f"local file or folder, or a pack insightface does not publish ({local[0].path})",
            hint=f"Copy it from the machine that has it and run `{command} models import PATH`; "
            f"insightface publishes {', '.join(KNOWN_PACKS)}.",
        )
    failed = unreachable({e.source for e in missing if e.source})
    if failed:
        hosts = ", ".join(sorted({f"{host(u)} ({why})" for u, why in failed.items()}))
        raise ModelUnavailable(
            f"cannot reach {hosts}: no internet here? use `{command} models import PATH`",
            hint="Download the files on a machine that has internet, copy them here, and run "
            f"`{command} models import PATH` for each; `{command} models` lists the URLs.",
        )
    done: list[Installed] = []
    if any(e.role == "CLIP" for e in missing):
        done.append(_download_clip(config, say))
    face = next((e for e in missing if e.role.startswith("face")), None)
    if face is not None:
        done.append(_download_face_pack(config, face, say))
    return done


def _download_clip(config: Config, say: Callable[[str], None]) -> Installed:
    import open_clip
    from huggingface_hub import get_hf_file_metadata

    from daemon.humanize import size as human
    from daemon.models.clip_weights import tag_source

    cfg = config.clip
    tag_cfg = open_clip.get_pretrained_cfg(cfg.model, cfg.pretrained)
    source = tag_source(tag_cfg)
    size = get_hf_file_metadata(source).size if tag_cfg.get("hf_hub") else None
    say(f"downloading CLIP {cfg.model}/{cfg.pretrained} ({human(size)}) from {source}")
    try:
        # open_clip's own downloader: the Hugging Face cache (clip.cache_dir), with its
        # progress bar; the cache writes to a temporary name and renames when complete.
        open_clip.download_pretrained(tag_cfg, cache_dir=cfg.cache_dir)
    except Exception as exc:  # the hub client's errors vary by version; all mean "not fetched"
        raise ModelUnavailable(f"downloading {source} failed: {short_reason(str(exc))}") from exc
    model = ClipModel(cfg, config.device, config.models.dir)
    model.load()  # from the cache now: raises ModelUnavailable if the download is unusable
    assert model.weights_file is not None
    path = Path(model.weights_file)
    file_size, sha = file_digest(path)
    return Installed("CLIP", f"{cfg.model}/{cfg.pretrained}", path, model.dim, file_size, sha)


def _download_face_pack(config: Config, entry: ModelEntry, say: Callable[[str], None]) -> Installed:
    import requests
    from insightface.utils.download import download_file

    from daemon.humanize import size as human

    assert entry.source is not None
    head = requests.head(entry.source, timeout=30, allow_redirects=True)
    length = head.headers.get("content-length")
    pack = config.faces.model_pack
    say(
        f"downloading face pack {pack} ({human(int(length) if length else None)}) from "
        f"{entry.source}"
    )
    dest = pack_dir(config.faces)
    dest.parent.mkdir(parents=True, exist_ok=True)
    archive = dest.parent / f".{pack}.download-{os.getpid()}.zip"
    try:
        try:
            download_file(
                entry.source, path=str(archive), overwrite=True
            )  # insightface's, with its bar
        except (OSError, RuntimeError, requests.RequestException) as exc:
            raise ModelUnavailable(f"downloading {entry.source} failed: {exc}") from exc
        return import_face_pack(config, archive, replace=True, label=pack)
    finally:
        archive.unlink(missing_ok=True)
