"""Which models the config needs, where each one is or must go, and whether it is there.

`locate` only looks at files (and imports open_clip for a tag's hub name), so
the daemon can call `require_models` before loading anything: a first start
without internet then names every missing model at once, within seconds, and
the exact command that fixes it, instead of failing on the first model after
a long wait. `inspect` (for `imgtrain models`) also loads each present model,
so a truncated or mismatched file shows as `unloadable` with the reason.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.errors import ModelUnavailable
from daemon.models.clip import ClipModel
from daemon.models.clip_weights import (
    cached_tag_file,
    looks_like_path,
    slot_file,
    tag_slot,
    tag_source,
)
from daemon.models.faces import PACK_URL, FaceAnalyzer, model_task
from daemon.models.reach import host, short_reason, unreachable

if TYPE_CHECKING:
    from daemon.config import Config, FacesConfig

PRESENT, MISSING, UNLOADABLE = "present", "missing", "unloadable"
SHORT_SHA = 12

# insightface's published packs: the detector and recognizer the daemon picks
# from each, and the size of the recognizer's vectors.
KNOWN_PACKS: dict[str, tuple[str, str, int]] = {
    "buffalo_l": ("det_10g.onnx", "w600k_r50.onnx", 512),
    "buffalo_m": ("det_2.5g.onnx", "w600k_r50.onnx", 512),
    "buffalo_s": ("det_500m.onnx", "w600k_mbf.onnx", 512),
    "buffalo_sc": ("det_500m.onnx", "w600k_mbf.onnx", 512),
    "antelopev2": ("scrfd_10g_bnkps.onnx", "glintr100.onnx", 512),
}


@dataclass
class ModelEntry:
    role: str  # "CLIP", "face detector", "face recognizer"
    name: str
    state: str  # present, missing or unloadable
    path: str  # where it is, or where it must go
    source: str | None = None  # where `imgtrain models download` fetches it from
    reason: str | None = None  # why it is missing or unloadable; a note when present
    size: int | None = None
    sha256: str | None = None  # the first 12 hex digits
    dim: int | None = None


def locate(config: Config) -> list[ModelEntry]:
    """The configured models, present or missing by their files alone."""
    entries = [locate_clip(config)] if "embedding" in config.phases else []
    if "faces" in config.phases:
        entries.extend(locate_faces(config.faces))
    return entries


def locate_clip(config: Config) -> ModelEntry:
    cfg = config.clip
    value = cfg.pretrained.strip()
    if value.lower() == "none":
        return ModelEntry(
            "CLIP",
            f"{cfg.model}/random",
            PRESENT,
            "-",
            reason="random weights (clip.pretrained: none): search results are meaningless",
        )
    if looks_like_path(value):
        path = Path(value).expanduser()
        if path.is_file():
            return ModelEntry("CLIP", f"{cfg.model}/{path.name}", PRESENT, str(path))
        return ModelEntry(
            "CLIP",
            f"{cfg.model}/{path.name}",
            MISSING,
            str(path),
            reason="clip.pretrained names this file and it does not exist",
        )
    import open_clip  # imports torch: a few seconds, once per process

    name = f"{cfg.model}/{value}"
    tag_cfg = open_clip.get_pretrained_cfg(cfg.model, value)
    if not tag_cfg:
        return ModelEntry(
            "CLIP",
            name,
            UNLOADABLE,
            "-",
            reason=f"clip.pretrained {value!r} is neither an open_clip tag for {cfg.model}"
            " nor a file",
        )
    found = slot_file(config.models.dir, cfg.model, value) or cached_tag_file(cfg, tag_cfg)
    if found is not None:
        return ModelEntry("CLIP", name, PRESENT, str(found), source=tag_source(tag_cfg))
    from huggingface_hub import constants as hf_constants

    slot = tag_slot(config.models.dir, cfg.model, value)
    return ModelEntry(
        "CLIP",
        name,
        MISSING,
        f"{slot.parent}/",
        source=tag_source(tag_cfg),
        reason=f"not in {slot.parent} nor in the Hugging Face cache "
        f"{cfg.cache_dir or hf_constants.HF_HUB_CACHE}",
    )


def pack_dir(cfg: FacesConfig) -> Path:
    return FaceAnalyzer(cfg).pack_dir()


def locate_faces(cfg: FacesConfig) -> list[ModelEntry]:
    pack = pack_dir(cfg)
    known = None if cfg.model_dir else KNOWN_PACKS.get(cfg.model_pack)
    det_name, rec_name = known[:2] if known else ("det_*.onnx", "*.onnx")
    if cfg.detector:
        det_name = cfg.detector
    source = PACK_URL.format(pack=cfg.model_pack) if known else None
    files = sorted(pack.glob("*.onnx")) if pack.is_dir() else []
    label = pack.name if cfg.model_dir else cfg.model_pack
    if not files:
        reason = f"no .onnx files in {pack}" if pack.is_dir() else f"{pack} does not exist"
        return [
            ModelEntry(
                role,
                f"{label}/{name}",
                MISSING,
                str(pack / name),
                source=source,
                reason=reason,
            )
            for role, name in (("face detector", det_name), ("face recognizer", rec_name))
        ]
    # Which file is which needs the models opened (`inspect`); by name is enough here.
    det = next((f for f in files if f.name == det_name or f.match(det_name)), files[0])
    rest = [f for f in files if f != det]
    rec = next((f for f in rest if f.name == rec_name), rest[0] if rest else det)
    return [
        ModelEntry("face detector", f"{label}/{det.name}", PRESENT, str(det), source=source),
        ModelEntry("face recognizer", f"{label}/{rec.name}", PRESENT, str(rec), source=source),
    ]


# -- loading every present model ---------------------------------------------------
def inspect(config: Config) -> list[ModelEntry]:
    """locate(), then each present model loaded: its dimension, or why it does not load."""
    entries = [inspect_clip(config)] if "embedding" in config.phases else []
    if "faces" in config.phases:
        entries.extend(inspect_faces(config.faces))
    return entries


def inspect_clip(config: Config) -> ModelEntry:
    entry = locate_clip(config)
    if entry.state != PRESENT:
        return entry
    model = ClipModel(config.clip, config.device, config.models.dir)
    try:
        model.load()
    except ModelUnavailable as exc:
        entry.state, entry.reason = UNLOADABLE, short_reason(exc.message)
    else:
        entry.dim = model.dim
        expected = clip_embed_dim(config.clip.model)
        if expected and model.dim != expected:
            entry.state = UNLOADABLE
            entry.reason = f"gives {model.dim}-d vectors where {config.clip.model} gives {expected}"
    _describe_file(entry)
    return entry


def clip_embed_dim(model: str) -> int | None:
    """The vector size the architecture promises (its config's embed_dim)."""
    import open_clip

    arch = open_clip.get_model_config(model) or {}
    return int(arch["embed_dim"]) if "embed_dim" in arch else None


def inspect_faces(cfg: FacesConfig) -> list[ModelEntry]:
    det_entry, rec_entry = locate_faces(cfg)
    if det_entry.state != PRESENT:
        return [det_entry, rec_entry]
    from daemon.models.base import make_ort_session

    pack = pack_dir(cfg)
    tasks: dict[Path, str | None] = {}
    broken: dict[Path, str] = {}
    for path in sorted(pack.glob("*.onnx")):
        try:
            tasks[path] = model_task(make_ort_session(path, 1))
        except ModelUnavailable as exc:
            broken[path] = short_reason(exc.message)
    det = next((p for p, t in tasks.items() if t == "detection"), None)
    if cfg.detector:
        det = (pack / cfg.detector) if (pack / cfg.detector) in tasks else None
    rec = next((p for p, t in tasks.items() if t == "recognition"), None)
    label = pack.name if cfg.model_dir else cfg.model_pack
    out = []
    for role, found, is_det in (("face detector", det, True), ("face recognizer", rec, False)):
        bad = [p for p in broken if _looks_like_detector(p) == is_det]
        if found is not None:
            out.append(ModelEntry(role, f"{label}/{found.name}", PRESENT, str(found)))
        elif bad:
            out.append(ModelEntry(role, f"{label}/{bad[0].name}", UNLOADABLE, str(bad[0])))
            out[-1].reason = broken[bad[0]]
        else:
            kind = "detector" if is_det else "recognizer"
            seen = ", ".join(p.name for p in tasks) or "no readable .onnx files"
            out.append(
                ModelEntry(
                    role,
                    f"{label}/?",
                    MISSING,
                    str(pack),
                    reason=f"no face {kind} among the pack's files ({seen})",
                )
            )
    for entry in out:
        entry.source = det_entry.source
    if all(e.state == PRESENT for e in out):
        analyzer = FaceAnalyzer(cfg)
        try:
            analyzer.load()
        except ModelUnavailable as exc:
            out[0].state, out[0].reason = UNLOADABLE, short_reason(exc.message)
        else:
            out[1].dim = analyzer.dim
    for entry in out:
        _describe_file(entry)
    return out


def _looks_like_detector(path: Path) -> bool:
    return path.name.startswith(("det", "scrfd"))


def _describe_file(entry: ModelEntry) -> None:
    path = Path(entry.path)
    if entry.state == MISSING or not path.is_file():
        return
    entry.size, entry.sha256 = file_digest(path)


def file_digest(path: Path) -> tuple[int, str]:
    """(size in bytes, the first 12 hex digits of the sha256)."""
    with path.open("rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    return path.stat().st_size, digest[:SHORT_SHA]


def imgtrain_command(config_path: str | Path | None = None) -> str:
    """How the person who started this process runs imgtrain, with the config it used."""
    from daemon.config import resolve_config_path

    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("imgtrain")
    command = str(argv0) if argv0.name == "imgtrain" else "imgtrain"
    path = resolve_config_path(config_path)
    return command if path == Path("config.yaml") else f"{command} --config {path}"


def require_models(config: Config, config_path: str | Path | None = None) -> None:
    """Raise ModelUnavailable naming every missing model, unless the daemon can fetch them all.

    A model the daemon downloads by itself (a CLIP tag; a face pack with
    faces.download) does not count as missing while its server answers.
    """
    missing = [e for e in locate(config) if e.state == MISSING]
    if not missing:
        return
    # What the loaders download by themselves: a CLIP tag's weights, and a published face
    # pack while faces.download is on.
    auto = [e for e in missing if e.source and (e.role == "CLIP" or config.faces.download)]
    failed = unreachable({e.source for e in auto if e.source})
    blocked = [e for e in missing if e not in auto or e.source in failed]
    if not blocked:
        return
    raise ModelUnavailable(
        missing_message(missing, failed, config),
        hint=missing_hint(missing, failed, config, imgtrain_command(config_path)),
    )


def missing_message(missing: list[ModelEntry], failed: dict[str, str], config: Config) -> str:
    groups: dict[str, list[str]] = {}
    for e in missing:
        where = e.path if e.role == "CLIP" else str(Path(e.path).parent)
        groups.setdefault(where, []).append(f"{e.role} {e.name}")
    names = "; ".join(
        f"{' and '.join(items)} (go{'es' if len(items) == 1 else ''} in {where})"
        for where, items in groups.items()
    )
    text = f"{len(missing)} model{'s' if len(missing) > 1 else ''} missing: {names}"
    if failed:
        hosts = sorted({f"{host(u)} ({why})" for u, why in failed.items()})
        text += f"; cannot reach {', '.join(hosts)} to download them"
    elif not config.faces.download and any(e.role.startswith("face") for e in missing):
        text += "; faces.download is off"
    return text


def fix_commands(entries: list[ModelEntry], command: str) -> str:
    """The commands that put `entries` in place: download where it can, import always."""
    imports = (
        f"copy the files here from a machine that has them and run `{command} models import PATH`"
        " for each (a CLIP weights file, a face pack folder or .zip)"
    )
    if not any(e.source for e in entries):
        return imports[0].upper() + imports[1:]
    return f"`{command} models download` where the hubs can be reached; without internet, {imports}"


def missing_hint(
    missing: list[ModelEntry], failed: dict[str, str], config: Config, command: str
) -> str:
    sources = ", ".join(sorted({e.source for e in missing if e.source}))
    first = fix_commands(missing, command)
    if failed:  # no internet here: the files come from elsewhere, and from where
        first = (
            f"Without internet: get the files ({sources}) on a machine that has them, copy them "
            f"here and run `{command} models import PATH` for each (a CLIP weights file, a face "
            f"pack folder or .zip). Where the hubs can be reached, `{command} models download`"
        )
    return (
        f"{first}. `{command} models` lists each model and where it goes. Meanwhile folders "
        f"are queued; the daemon retries every {config.models.retry_seconds:g} s, and at once "
        "on SIGHUP (systemctl reload imgtrain)."
    )


def fix_missing(missing: list[ModelEntry], config_path: str | Path | None = None) -> str:
    """One line for `imgtrain doctor`: what is missing, where it goes, and the commands."""
    cmd = imgtrain_command(config_path)
    return (
        "MODEL_UNAVAILABLE: missing "
        + ", ".join(f"{e.name} (goes in {e.path})" for e in missing)
        + f" -> {fix_commands(missing, cmd)}; `{cmd} models` lists what goes where"
    )
