"""Search by text and by photo: the real tiny CLIP, real JPEGs, real ChromaDB.

The tiny CLIP has random (seeded) weights, so only what holds for any model
is asserted: a photo in the library finds itself first, results come back
ranked, sized and pointing at files that exist.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from daemon.config import ClipConfig, Config, DecodeConfig
from daemon.errors import ModelMismatch, NotFound
from daemon.imaging.decode import decode
from daemon.models.clip import ClipModel
from daemon.store.chroma import Store
from daemon.store.search import SearchHit, search, search_image
from tests.conftest import make_jpeg

DECODE = DecodeConfig()


@pytest.fixture(scope="module")
def clip(tiny_clip_config: Path) -> ClipModel:
    cfg = ClipConfig.model_validate(
        {
            "model": tiny_clip_config.stem,
            "pretrained": "none",
            "model_config": str(tiny_clip_config),
            "threads": 1,
            "precision": "fp32",
        }
    )
    model = ClipModel(cfg)
    model.load()
    return model


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, clip: ClipModel) -> tuple[Store, list[Path]]:
    """Eight photos embedded the way the embedding phase stores them."""
    root = tmp_path_factory.mktemp("library")
    photos = [make_jpeg(root / "batch" / f"img{i}.jpg", seed=i) for i in range(8)]
    decoded = [decode(p, DECODE) for p in photos]
    store = Store(Config.model_validate({"data_dir": str(root / "data")}))
    store.open_images(clip.model_name, clip.dim)
    store.upsert_images(
        [f"{i:064x}" for i in range(len(photos))],
        clip.embed_images([d.image for d in decoded]),
        [
            {
                "path": str(p),
                "batch_id": 1 + i % 2,
                "width": d.width,
                "height": d.height,
                "captured_at": d.captured_at,
                "model": clip.model_name,
            }
            for i, (p, d) in enumerate(zip(photos, decoded, strict=True))
        ],
    )
    return store, photos


def check_hits(hits: list[SearchHit], k: int) -> None:
    assert len(hits) == k
    assert all(Path(h.path).is_file() for h in hits)
    assert all(-1.0 <= h.score <= 1.0 for h in hits)
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert len({h.image_id for h in hits}) == k


def test_a_photo_from_the_library_finds_itself_first(
    library: tuple[Store, list[Path]], clip: ClipModel
) -> None:
    store, photos = library
    hits = search_image(photos[5], 3, store=store, clip=clip, decode_cfg=DECODE)
    check_hits(hits, 3)
    assert hits[0].path == str(photos[5])
    assert hits[0].score == pytest.approx(1.0, abs=1e-3)
    assert hits[0].image_id == f"{5:064x}" and hits[0].batch_id == 2


def test_text_search_returns_k_existing_photos(
    library: tuple[Store, list[Path]], clip: ClipModel
) -> None:
    store, photos = library
    hits = search("a red rectangle on a blue background", 5, store=store, clip=clip)
    check_hits(hits, 5)
    assert {h.path for h in hits} <= {str(p) for p in photos}
    # The same model's tokenizer and text tower made the query vector.
    query = clip.embed_text(["a red rectangle on a blue background"])[0]
    best = store.get_images([hits[0].image_id])[0]["metadata"]["path"]
    assert best == hits[0].path
    assert np.isclose(np.linalg.norm(query), 1.0, atol=1e-4)
    assert len(search("anything", 50, store=store, clip=clip)) == len(photos)


def test_an_empty_library_returns_nothing(tmp_path: Path, clip: ClipModel) -> None:
    store = Store(Config.model_validate({"data_dir": str(tmp_path / "data")}))
    photo = make_jpeg(tmp_path / "query.jpg", seed=99)
    assert search("a dog", 5, store=store, clip=clip) == []
    assert search_image(photo, 5, store=store, clip=clip, decode_cfg=DECODE) == []
    assert store.count_images() == 0


def test_a_library_of_another_model_is_refused(tmp_path: Path, clip: ClipModel) -> None:
    store = Store(Config.model_validate({"data_dir": str(tmp_path / "data")}))
    store.open_images("ViT-B-32/laion2b_s34b_b79k", 512)
    store.upsert_images(["a" * 64], np.ones((1, 512), np.float32), [{"path": "/x.jpg"}])
    with pytest.raises(ModelMismatch) as exc:
        search("a dog", 5, store=store, clip=clip)
    assert clip.model_name in exc.value.message
    assert "ViT-B-32/laion2b_s34b_b79k" in exc.value.message


def test_a_missing_query_photo_is_not_found(
    tmp_path: Path, library: tuple[Store, list[Path]], clip: ClipModel
) -> None:
    store, _ = library
    with pytest.raises(NotFound):
        search_image(tmp_path / "nope.jpg", 3, store=store, clip=clip, decode_cfg=DECODE)
