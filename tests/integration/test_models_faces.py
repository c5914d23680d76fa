"""Face detection and embedding with the real shared models on the real shared photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from daemon.config import DecodeConfig, FacesConfig
from daemon.errors import Code, ModelUnavailable
from daemon.imaging.decode import decode, to_bgr
from daemon.models import Face, FaceAnalyzer
from tests.conftest import make_jpeg

# Measured with det_2.5g at 640 and threshold 0.5 (../shared/models/README.md).
MIXED_COUNTS = {"kit_with_rose.jpg": 2, "two_people.jpg": 2, "obama_and_biden.jpg": 3}


@pytest.fixture(scope="module")
def analyzer(face_pack: Path) -> FaceAnalyzer:
    model = FaceAnalyzer(FacesConfig(model_dir=str(face_pack), download=False, threads=1))
    model.load()
    return model


def _faces(analyzer: FaceAnalyzer, path: Path, max_side: int = 1600) -> list[Face]:
    d = decode(path, DecodeConfig(max_side=max_side))
    return analyzer.analyze(to_bgr(d.image), d.scale)


def _photos(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def test_pack_loads_with_the_recognizers_own_dimension(analyzer: FaceAnalyzer) -> None:
    assert analyzer.loaded
    assert analyzer.model_name == "testpack:det_2.5g+mobilefacenet_128"
    assert analyzer.dim == 128  # from the model's output, not an assumed 512


def test_every_portrait_has_exactly_one_face(analyzer: FaceAnalyzer, shared_photos: Path) -> None:
    photos = _photos(shared_photos / "people")
    assert len(photos) == 9
    counts = {p.relative_to(shared_photos).as_posix(): len(_faces(analyzer, p)) for p in photos}
    assert counts == dict.fromkeys(counts, 1)


def test_group_photos_have_the_measured_face_counts(
    analyzer: FaceAnalyzer, shared_photos: Path
) -> None:
    photos = _photos(shared_photos / "mixed")
    assert len(photos) == 9
    counts = {p.name: len(_faces(analyzer, p)) for p in photos}
    assert counts == {p.name: MIXED_COUNTS.get(p.name, 1) for p in photos}


def test_faces_carry_unit_embeddings_and_sane_geometry(
    analyzer: FaceAnalyzer, shared_photos: Path
) -> None:
    path = shared_photos / "mixed" / "obama_and_biden.jpg"
    faces = _faces(analyzer, path)
    full = decode(path, DecodeConfig(max_side=4000))
    for face in faces:
        x1, y1, x2, y2 = face.bbox
        assert 0 <= x1 < x2 <= full.width and 0 <= y1 < y2 <= full.height
        assert face.area == pytest.approx((x2 - x1) * (y2 - y1))
        assert np.array(face.landmarks).shape == (5, 2)
        assert 0.5 <= face.score <= 1.0
        assert face.embedding.shape == (128,) and face.embedding.dtype == np.float32
        assert float(np.linalg.norm(face.embedding)) == pytest.approx(1.0, abs=1e-5)
    # Sorted left to right, so face numbers are the same on every run.
    assert [f.bbox[0] for f in faces] == sorted(f.bbox[0] for f in faces)
    again = _faces(analyzer, path)
    assert [f.bbox for f in again] == [f.bbox for f in faces]


def test_same_person_is_close_and_different_people_are_far(
    analyzer: FaceAnalyzer, shared_photos: Path
) -> None:
    people = shared_photos / "people"
    (obama,) = _faces(analyzer, people / "obama" / "obama.jpg")
    (obama2,) = _faces(analyzer, people / "obama" / "obama2.jpg")
    (kit,) = _faces(analyzer, people / "kit_harington" / "john1.jpeg")
    assert float(obama.embedding @ obama2.embedding) > 0.5
    assert float(obama.embedding @ kit.embedding) < 0.3


def test_reduced_decode_reports_boxes_in_original_pixels(
    analyzer: FaceAnalyzer, shared_photos: Path
) -> None:
    path = shared_photos / "mixed" / "obama_and_biden.jpg"  # 2000 x 1428
    full = _faces(analyzer, path, max_side=2000)
    half = _faces(analyzer, path, max_side=1000)
    assert len(full) == len(half) == 3
    for a, b in zip(full, half, strict=True):
        size = a.bbox[2] - a.bbox[0]
        assert np.allclose(a.bbox, b.bbox, atol=0.05 * size)
        assert np.allclose(a.landmarks, b.landmarks, atol=0.05 * size)
        assert float(a.embedding @ b.embedding) > 0.9


def test_photo_without_faces_gives_none(analyzer: FaceAnalyzer, tmp_path: Path) -> None:
    assert _faces(analyzer, make_jpeg(tmp_path / "boxes.jpg", (640, 480), seed=3)) == []


def test_named_detector_wins_over_sorted_order(shared: Path, tmp_path: Path) -> None:
    pack = tmp_path / "full"
    pack.mkdir()
    for name in ("det_2.5g.onnx", "det_500m.onnx", "mobilefacenet_128.onnx"):
        (pack / name).symlink_to(shared / "models" / "faces" / name)
    default = FaceAnalyzer(FacesConfig(model_dir=str(pack), download=False, threads=1))
    default.load()
    assert default.model_name == "full:det_2.5g+mobilefacenet_128"  # first detector sorted
    chosen = FaceAnalyzer(
        FacesConfig(model_dir=str(pack), detector="det_500m.onnx", download=False, threads=1)
    )
    chosen.load()
    assert chosen.model_name == "full:det_500m+mobilefacenet_128"


def test_empty_pack_dir_names_the_directory(tmp_path: Path) -> None:
    pack = tmp_path / "emptypack"
    pack.mkdir()
    model = FaceAnalyzer(FacesConfig(model_dir=str(pack), download=False))
    with pytest.raises(ModelUnavailable) as info:
        model.load()
    assert info.value.code == Code.MODEL_UNAVAILABLE
    assert str(pack) in info.value.message
    assert not model.loaded


def test_pack_without_a_recognizer_says_what_is_missing(shared: Path, tmp_path: Path) -> None:
    pack = tmp_path / "detonly"
    pack.mkdir()
    (pack / "det_500m.onnx").symlink_to(shared / "models" / "faces" / "det_500m.onnx")
    with pytest.raises(ModelUnavailable) as info:
        FaceAnalyzer(FacesConfig(model_dir=str(pack), download=False)).load()
    assert "recognizer" in info.value.message and "det_500m.onnx" in info.value.message


def test_corrupt_model_file_is_named(shared: Path, tmp_path: Path) -> None:
    pack = tmp_path / "broken"
    pack.mkdir()
    (pack / "det_2.5g.onnx").write_bytes(b"interrupted download")
    (pack / "w600k_r50.onnx").symlink_to(shared / "models" / "faces" / "mobilefacenet_128.onnx")
    with pytest.raises(ModelUnavailable) as info:
        FaceAnalyzer(FacesConfig(model_dir=str(pack), download=False)).load()
    assert str(pack / "det_2.5g.onnx") in info.value.message


def test_missing_pack_without_download_says_where_to_put_it(tmp_path: Path) -> None:
    cfg = FacesConfig(model_root=str(tmp_path / "insightface"), download=False)
    with pytest.raises(ModelUnavailable) as info:
        FaceAnalyzer(cfg).load()
    expected = tmp_path / "insightface" / "models" / "buffalo_l"
    assert str(expected) in info.value.message
    assert "buffalo_l.zip" in info.value.hint and str(expected) in info.value.hint
    assert not expected.exists()  # nothing was created or fetched


def test_several_images_at_once_give_the_same_faces_in_order(
    face_pack: Path, analyzer: FaceAnalyzer, shared_photos: Path
) -> None:
    both_cores = FaceAnalyzer(FacesConfig(model_dir=str(face_pack), download=False, threads=2))
    assert both_cores.parallel == 2
    decoded = [decode(p, DecodeConfig(max_side=1600)) for p in _photos(shared_photos)]
    together = list(both_cores.analyze_images([(d.image, d.scale) for d in decoded]))
    alone = [analyzer.analyze(to_bgr(d.image), d.scale) for d in decoded]
    assert [len(f) for f in together] == [len(f) for f in alone]
    assert sum(len(f) for f in together) == 22  # ../shared/models/README.md
    for mine, ref in zip(together, alone, strict=True):
        for a, b in zip(mine, ref, strict=True):
            assert np.allclose(a.bbox, b.bbox, atol=0.5)
            assert float(a.embedding @ b.embedding) > 0.999


def test_detector_input_fitted_to_the_photo_finds_what_insightface_finds(
    shared: Path, analyzer: FaceAnalyzer, shared_photos: Path, tmp_path: Path
) -> None:
    """insightface pads every photo to a 640x640 square; we drop the padding. Same faces."""
    import os

    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from insightface.app import FaceAnalysis

    pack = tmp_path / "models" / "ref"
    pack.mkdir(parents=True)
    for name in ("det_2.5g.onnx", "mobilefacenet_128.onnx"):
        (pack / name).symlink_to(shared / "models" / "faces" / name)
    ref = FaceAnalysis(name="ref", root=str(tmp_path), providers=["CPUExecutionProvider"])
    ref.prepare(ctx_id=-1, det_size=(640, 640))
    shapes = set()
    for path in _photos(shared_photos):
        d = decode(path, DecodeConfig(max_side=4000))  # full size: no scale in the way
        bgr = to_bgr(d.image)
        shapes.add("portrait" if bgr.shape[0] > bgr.shape[1] else "landscape")
        ours = analyzer.analyze(bgr)
        theirs = sorted(ref.get(bgr), key=lambda f: (round(f.bbox[0], 1), round(f.bbox[1], 1)))
        assert len(ours) == len(theirs), path.name
        h, w = bgr.shape[:2]
        for a, b in zip(ours, theirs, strict=True):
            size = float(b.bbox[2] - b.bbox[0])
            box = np.clip(b.bbox, 0, [w, h, w, h])  # ours are clipped to the photo
            assert np.allclose(a.bbox, box, atol=0.02 * size), path.name
            assert np.allclose(a.landmarks, b.kps, atol=0.02 * size), path.name
            assert float(a.embedding @ (b.embedding / np.linalg.norm(b.embedding))) > 0.98
    assert shapes == {"portrait", "landscape"}
