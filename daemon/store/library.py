"""Which collection holds each CLIP model's image vectors, and which one is in use.

The ledger's `clip_models` table is the record: one row per model the library
has vectors of, exactly one of them `active` (search and new batches use it).
A library's first model keeps the collection name `images` (every library
made before re-indexing existed has it); every later one gets a collection
named after the model (`collection_for`), so a model's vectors stay where
they are while another is active, and switching back finds them.

While a re-index runs (`ledger.reindexes`), the daemon embeds new batches
with both models (`writers`), and search keeps using the active one
(`reader`) until the re-index completes and makes the new one active.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from daemon.errors import ImgtrainError, ModelMismatch, ModelUnavailable
from daemon.ledger.clipmodels import ClipModelRow
from daemon.ledger.ledger import Ledger
from daemon.ledger.reindexes import ReindexRow
from daemon.models.clip import ClipModel
from daemon.store.chroma import IMAGES, Store
from daemon.vocab import ClipModelState, ReindexState

if TYPE_CHECKING:
    from daemon.config import ClipConfig, Config
    from daemon.models import ModelRegistry

log = logging.getLogger(__name__)


def collection_for(model: str) -> str:
    """The collection of a model that is not the library's first: its name, made Chroma-legal
    (letters, digits, '-'), and a digest so two names that look alike never share one."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", model).strip("-")[:48] or "model"
    return f"{IMAGES}-{slug}-{hashlib.sha256(model.encode()).hexdigest()[:8]}"


def settings_of(cfg: ClipConfig) -> dict[str, Any]:
    """The clip.* keys that say which model this is and where its weights are."""
    return {
        "model": cfg.model,
        "pretrained": cfg.pretrained,
        "model_config": cfg.model_config_path,
        "cache_dir": cfg.cache_dir,
    }


def clip_config(base: ClipConfig, settings: dict[str, Any]) -> ClipConfig:
    """`base` (batch size, threads, precision) loading the model of `settings`."""
    return base.model_copy(
        update={
            "model": settings["model"],
            "pretrained": settings["pretrained"],
            "model_config_path": settings.get("model_config"),
            "cache_dir": settings.get("cache_dir"),
        }
    )


def model_name(cfg: ClipConfig) -> str:
    return ClipModel(cfg).model_name  # cheap: nothing is loaded


def active_model(ledger: Ledger, store: Store, cfg: ClipConfig) -> ClipModelRow:
    """The active model's row. A library's first run under this version registers it from
    what the store holds: the configured model when `images` is absent, empty or of it;
    else the model `images` was made with (its settings unknown)."""
    active = ledger.clip_models.active()
    if active is not None:
        return active
    name = model_name(cfg)
    meta = store.image_collections().get(IMAGES)
    if meta is None or meta.get("model") == name or store.count_images(IMAGES) == 0:
        return ledger.clip_models.add(name, IMAGES, settings_of(cfg), ClipModelState.ACTIVE)
    return ledger.clip_models.add(str(meta["model"]), IMAGES, None, ClipModelState.ACTIVE)


def active_collection(ledger: Ledger) -> str:
    """The collection search reads: the active model's (`images` before one is recorded)."""
    active = ledger.clip_models.active()
    return active.collection if active is not None else IMAGES


def image_collections(ledger: Ledger) -> list[str]:
    """Every collection holding this library's image vectors, the active one first: each
    model's but a dropped one's (a building one too: a re-index may go on into it), else
    `images`. What is kept in step with the ledger (who is in a photo) is written to all."""
    rows = [r for r in ledger.clip_models.all() if r.state != ClipModelState.DROPPED]
    rows.sort(key=lambda r: r.state != ClipModelState.ACTIVE)
    return [r.collection for r in rows] or [IMAGES]


def drop(ledger: Ledger, store: Store, row: ClipModelRow) -> None:
    """Delete a model's collection (never the active one's); its row says `dropped`."""
    if row.state == ClipModelState.ACTIVE:
        raise ValueError(f"{row.model} is the active model")
    ledger.clip_models.update(row.model, state=ClipModelState.DROPPED)
    store.drop_collection(row.collection)


def sweep(ledger: Ledger, store: Store) -> list[str]:
    """Delete the collections the ledger says are dropped (a crash may have left one)."""
    present = store.image_collections()
    gone = [
        r.collection
        for r in ledger.clip_models.all()
        if r.state == ClipModelState.DROPPED and r.collection in present
    ]
    for name in gone:
        log.info("deleting the collection %s of a dropped model", name)
        store.drop_collection(name)
    return gone


# -- the daemon: where new batches' images go -------------------------------------------
@dataclass(frozen=True)
class Slot:
    """One CLIP model's collection, with the model that embeds into it."""

    model: str
    collection: str
    clip: ClipModel


@dataclass
class Writers:
    slots: list[Slot] = field(default_factory=list)  # the active model's first, if it loads
    reindex: ReindexRow | None = None  # the running re-index (its target is the last slot)


def worker_slot(store: Store, models: ModelRegistry) -> Slot:
    """Where a remote worker (no ledger) writes: the configured model's own collection,
    `images` when that model is the library's first, else the model's named collection."""
    clip = models.clip()
    clip.load()
    name = clip.model_name
    try:
        store.open_images(name, clip.dim, name=IMAGES)
        return Slot(name, IMAGES, clip)
    except ModelMismatch:
        store.open_images(name, clip.dim, name=collection_for(name))
        return Slot(name, collection_for(name), clip)


def writers(ledger: Ledger, store: Store, models: ModelRegistry) -> Writers:
    """The collections the embedding phase writes, with their models loaded and opened.

    Raises ModelMismatch when the config names a model that is neither the
    active one nor a running re-index's.
    """
    configured = models.clip()
    name = configured.model_name
    active = active_model(ledger, store, configured.cfg)
    sweep(ledger, store)
    job = ledger.reindexes.open()
    out = Writers(reindex=job)
    if name == active.model:
        if active.settings != settings_of(configured.cfg):
            ledger.clip_models.update(name, settings=settings_of(configured.cfg))
        out.slots.append(Slot(name, active.collection, configured))
    elif job is not None and job.model == name:
        if active.settings is not None:
            clip = models.clip_for(clip_config(configured.cfg, active.settings))
            out.slots.append(Slot(active.model, active.collection, clip))
    else:
        raise _mismatch(active, job, name)
    if job is not None and job.model != active.model:
        target = ledger.clip_models.get(job.model)
        if target is not None and target.settings is not None:
            clip = models.clip_for(clip_config(configured.cfg, target.settings))
            out.slots.append(Slot(target.model, target.collection, clip))
    for slot in list(out.slots):
        try:
            slot.clip.load()
            store.open_images(slot.model, slot.clip.dim, name=slot.collection)
        except ImgtrainError as exc:
            if slot.clip is configured or len(out.slots) == 1:
                raise
            _left_out(ledger, out, slot, exc)
    return out


def _left_out(ledger: Ledger, out: Writers, slot: Slot, exc: ImgtrainError) -> None:
    """A model other than the configured one did not load: go on without it."""
    out.slots.remove(slot)
    if out.reindex is not None and slot.model == out.reindex.model:
        log.error("re-index to %s failed: %s", slot.model, exc)
        ledger.reindexes.finish(out.reindex.reindex_id, ReindexState.FAILED, str(exc))
        out.reindex = None
    else:
        log.error("%s (new photos go only into %s until the re-index completes)", exc, slot.model)


def _mismatch(active: ClipModelRow, job: ReindexRow | None, name: str) -> ModelMismatch:
    if job is not None:
        return ModelMismatch(
            f"clip in the config names {name}, but the running re-index is to {job.model}"
            f" (the library is indexed with {active.model})",
            hint=f"Set clip.model/clip.pretrained to {job.model} or {active.model}, or cancel"
            " the re-index (imgtrain reindex --cancel) and run `imgtrain reindex` again.",
        )
    return ModelMismatch(
        f"the library's images are indexed with {active.model}; clip in the config names {name}",
        hint=f"Run `imgtrain reindex` to index them with {name} (search keeps using"
        f" {active.model} until it is complete), or set clip.model/clip.pretrained back to"
        f" {active.model}.",
    )


# -- search: the collection it reads ------------------------------------------------------
@dataclass(frozen=True)
class Reader:
    clip: ClipConfig  # loads the model that made the collection's vectors
    collection: str
    reindex: ReindexRow | None  # a re-index under way: results come from the old model


def reader(ledger: Ledger | None, cfg: ClipConfig) -> Reader:
    """What search uses: the active model and its collection (the config's model and
    `images` for a library that has not recorded one)."""
    active = ledger.clip_models.active() if ledger is not None else None
    if active is None:
        return Reader(cfg, IMAGES, None)
    job = ledger.reindexes.open() if ledger is not None else None
    if active.settings is not None:
        return Reader(clip_config(cfg, active.settings), active.collection, job)
    if active.model == model_name(cfg):
        return Reader(cfg, active.collection, job)
    raise ModelUnavailable(
        f"the library's images are indexed with {active.model}, and this library has no record"
        " of that model's settings (it was indexed before imgtrain recorded them)",
        hint=f"Set clip.model/clip.pretrained back to {active.model} to search now, or wait"
        " until `imgtrain reindex` completes: search then uses the new model.",
    )


def collection_of(config: Config, model: str) -> str:
    """Where `model`'s image vectors are (or go): its collection, else the active model's
    (opening that with `model` then says MODEL_MISMATCH), else `images`."""
    if not config.ledger_path.exists():
        return IMAGES
    ledger = Ledger(config.ledger_path)
    try:
        row = ledger.clip_models.get(model)
        if row is None or row.state == ClipModelState.DROPPED:
            row = ledger.clip_models.active()
        return row.collection if row is not None else IMAGES
    finally:
        ledger.close()


def bound_to_model(store: Store, config: Config, clip: ClipModel | None) -> tuple[Any, Any]:
    """`store.open_images` and `store.count_images` for the collection of `clip`'s model."""
    name = collection_of(config, clip.model_name) if clip is not None else IMAGES
    return partial(store.open_images, name=name), partial(store.count_images, name)
