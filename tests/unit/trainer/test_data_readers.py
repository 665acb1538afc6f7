"""Readers: DAGM (on the shared samples), MVTec layout, texture folders, CIFAR pickles, the image loader."""

from __future__ import annotations

import logging
import pickle
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from trainer.data.cifar import read_cifar
from trainer.data.dagm import DagmDataset, parse_labels
from trainer.data.dagm import read_mask as read_dagm_mask
from trainer.data.images import DatasetError, ImageLoader, ImageReadError, read_image, to_uint8, to_unit
from trainer.data.mvtec import MvtecDataset, find_mvtec_roots
from trainer.data.mvtec import read_mask as read_mvtec_mask
from trainer.data.textures import texture_classes

# ---------------------------------------------------------------- images


def test_reads_8_and_16_bit_grayscale_and_colour(tmp_path: Path) -> None:
    deep = (np.arange(40 * 70, dtype=np.uint32).reshape(40, 70) * 23 % 65536).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    colour = np.zeros((30, 20, 3), np.uint8)
    colour[..., 2] = 200  # pure red in BGR
    cv2.imwrite(str(tmp_path / "colour.png"), colour)
    colour16 = colour.astype(np.uint16) * 257
    cv2.imwrite(str(tmp_path / "colour16.tif"), colour16)

    got = read_image(tmp_path / "deep.png")
    assert got.dtype == np.uint16 and got.shape == (40, 70)
    np.testing.assert_array_equal(got, deep)  # full 16-bit precision is kept
    assert to_unit(got).max() == pytest.approx(deep.max() / 65535.0)
    np.testing.assert_array_equal(to_uint8(got), np.round(deep / 257.0).astype(np.uint8))

    gray = read_image(tmp_path / "colour.png")
    assert gray.shape == (30, 20) and gray.dtype == np.uint8
    assert int(gray[0, 0]) == pytest.approx(0.299 * 200, abs=1)
    gray16 = read_image(tmp_path / "colour16.tif")
    assert gray16.dtype == np.uint16 and int(gray16[0, 0]) == pytest.approx(0.299 * 200 * 257, abs=300)


def test_unreadable_images_are_skipped_by_name_and_recorded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), np.full((16, 16), 7, np.uint8))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:40])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.png"

    with pytest.raises(ImageReadError, match=r"truncated\.png"):
        read_image(truncated)

    loader = ImageLoader()
    with caplog.at_level(logging.WARNING):
        loaded = loader.read_all([good, truncated, text, empty, missing])
    assert [p for p, _ in loaded] == [good]
    assert [s.path for s in loader.skipped] == [truncated, text, empty, missing]
    for name in ("truncated.png", "notes.png", "empty.png", "missing.png"):
        assert name in caplog.text
    assert "empty file" in loader.skipped[2].reason


# ---------------------------------------------------------------- DAGM (shared samples)


def test_dagm_samples_labels_and_ellipse_masks(shared_data: Path) -> None:
    dagm = DagmDataset(shared_data / "dagm2007-samples")
    assert dagm.classes() == [f"Class{i}" for i in range(1, 7)]

    train = dagm.samples("Class1", "Train")
    assert [s.path.name for s in train] == ["0593.PNG", "0595.PNG", "0602.PNG", "0616.PNG", "0626.PNG"]
    assert [s.defective for s in train] == [False, True, False, True, True]
    assert [s.mask_path.name if s.mask_path else None for s in train] == [
        None,
        "0595_label.PNG",
        None,
        "0616_label.PNG",
        "0626_label.PNG",
    ]
    assert [p.name for p in dagm.good_train("Class1")] == ["0593.PNG", "0602.PNG"]

    # A defective image whose row names no label file keeps its label, without a mask.
    test2 = {s.path.name: s for s in dagm.samples("Class2", "Test")}
    assert test2["0003.PNG"].defective and test2["0003.PNG"].mask_path is None
    assert read_dagm_mask(test2["0003.PNG"], (512, 512)) is None
    assert dagm.samples("Class5", "Train") == []  # the subset has no Train split for Class5

    for sample in (s for s in train if s.defective):
        image = read_image(sample.path)
        mask = read_dagm_mask(sample, image.shape)
        assert mask is not None and mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
        # The label is one filled ellipse: a single blob whose area matches its fitted ellipse.
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        assert len(contours) == 1
        (_, _), (major, minor), _ = cv2.fitEllipse(contours[0])
        assert (mask > 0).sum() == pytest.approx(np.pi * major * minor / 4, rel=0.1)
    good = next(s for s in train if not s.defective)
    assert not read_dagm_mask(good, (512, 512)).any()  # type: ignore[union-attr]


def test_dagm_labels_header_trailing_tabs_malformed_and_missing_rows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    label_dir = tmp_path / "Class3" / "Train" / "Label"
    label_dir.mkdir(parents=True)
    (label_dir / "Labels.txt").write_text(
        "1\n0001\t0\t0001.PNG\t0\t0\t\n\ngarbage line\n0002\t1\t0002.PNG\t0\t0002_label.PNG\n"
        "0003\t0\t0003.PNG\t0\t0\t\n"
    )
    for name in ("0001.PNG", "0002.PNG"):  # 0003 is listed but not on disk
        cv2.imwrite(str(tmp_path / "Class3" / "Train" / name), np.zeros((32, 32), np.uint8))
    mask = np.zeros((32, 32), np.uint8)
    cv2.ellipse(mask, (16, 16), (8, 4), 30, 0, 360, 255, -1)
    cv2.imwrite(str(label_dir / "0002_label.PNG"), mask)

    with caplog.at_level(logging.WARNING):
        labels = parse_labels(label_dir / "Labels.txt")
    assert [(lb.image_id, lb.defective, lb.label_name) for lb in labels] == [
        ("0001", False, None),
        ("0002", True, "0002_label.PNG"),
        ("0003", False, None),
    ]
    assert "Labels.txt:4" in caplog.text  # the malformed row is named by line

    dagm = DagmDataset(tmp_path)
    samples = dagm.samples("Class3", "Train")
    assert [s.path.name for s in samples] == ["0001.PNG", "0002.PNG"]
    assert dagm.missing_rows == 1
    with pytest.raises(DatasetError, match="ClassN"):
        DagmDataset(tmp_path / "Class3")


# ---------------------------------------------------------------- MVTec layout


def test_mvtec_layout_on_kolektorsdd(shared_data: Path) -> None:
    data = MvtecDataset(shared_data / "kolektorsdd")
    assert len(data.train_good()) > 100
    assert data.defect_types() == ["crack"]
    samples = data.test_samples()
    defects = [s for s in samples if s.is_defective]
    assert defects and all(s.mask_path is not None for s in defects)
    sample = defects[0]
    image = read_image(sample.path)
    mask = read_mvtec_mask(sample, image.shape)
    assert mask is not None and mask.shape == image.shape and mask.any()


def test_mvtec_layout_good_defects_masks_and_roots(tmp_path: Path) -> None:
    product = tmp_path / "widget"
    for sub in ("train/good", "test/good", "test/dent", "ground_truth/dent"):
        (product / sub).mkdir(parents=True)
    img = np.full((40, 60), 90, np.uint8)
    for name in (
        "train/good/a.png",
        "train/good/b.png",
        "test/good/c.png",
        "test/dent/d.png",
        "test/dent/e.png",
    ):
        cv2.imwrite(str(product / name), img)
    big_mask = np.zeros((80, 120), np.uint8)
    big_mask[10:20, 30:40] = 255
    cv2.imwrite(str(product / "ground_truth/dent/d_mask.png"), big_mask)
    (product / "train/good/readme.txt").write_text("not an image")

    data = MvtecDataset(product)
    assert [p.name for p in data.train_good()] == ["a.png", "b.png"]
    samples = data.test_samples()
    assert [(s.path.name, s.defect, s.mask_path is not None) for s in samples] == [
        ("c.png", "good", False),
        ("d.png", "dent", True),
        ("e.png", "dent", False),
    ]
    mask = read_mvtec_mask(samples[1], (40, 60))  # a mask of another size is brought to the image's
    assert mask is not None and mask.shape == (40, 60) and (mask > 0).sum() == 25
    assert read_mvtec_mask(samples[0], (40, 60)).sum() == 0  # type: ignore[union-attr]
    assert read_mvtec_mask(samples[2], (40, 60)) is None

    assert find_mvtec_roots(product) == [product]
    assert find_mvtec_roots(tmp_path) == [product]
    with pytest.raises(DatasetError, match="train/good"):
        MvtecDataset(tmp_path)


# ---------------------------------------------------------------- texture folders


def test_texture_classes_one_sub_folder_each(tmp_path: Path) -> None:
    for cls, n in (("canvas", 2), ("cork", 3)):
        for i in range(n):
            (tmp_path / cls / "scan").mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(tmp_path / cls / "scan" / f"{i}.png"), np.zeros((8, 8), np.uint8))
    (tmp_path / "empty").mkdir()
    classes = texture_classes(tmp_path)
    assert sorted(classes) == ["canvas", "cork"]
    assert len(classes["cork"]) == 3
    with pytest.raises(DatasetError, match="sub-folder"):
        texture_classes(tmp_path / "empty")


# ---------------------------------------------------------------- CIFAR pickles


def _cifar_pickle(path: Path, n_per_class: int, n_classes: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    data = rng.integers(0, 256, (labels.size, 3072), dtype=np.uint8)
    data[0, :1024], data[0, 1024:2048], data[0, 2048:] = 200, 100, 50  # first image: one flat colour
    path.write_bytes(
        pickle.dumps({b"data": data, b"fine_labels": labels.tolist(), b"filenames": []}, protocol=2)
    )
    return data


def test_cifar_pickle_to_grayscale_classes(tmp_path: Path) -> None:
    _cifar_pickle(tmp_path / "train", n_per_class=4, n_classes=3)
    classes = read_cifar(tmp_path / "train")
    assert sorted(classes) == ["000", "001", "002"]
    assert all(v.shape == (4, 32, 32) and v.dtype == np.uint8 for v in classes.values())
    assert int(classes["000"][0, 5, 5]) == round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)
    assert read_cifar(tmp_path / "train", max_per_class=2)["001"].shape == (2, 32, 32)

    (tmp_path / "meta").write_bytes(pickle.dumps({b"fine_label_names": [b"apple", b"bee", b"cloud"]}))
    assert sorted(read_cifar(tmp_path / "train")) == ["apple", "bee", "cloud"]


def test_cifar_pickle_from_old_numpy_loads_and_code_is_refused(tmp_path: Path) -> None:
    # Pickles written by numpy 1.x (like the published CIFAR files) name numpy.core.multiarray.
    _cifar_pickle(tmp_path / "train", n_per_class=2, n_classes=2)
    raw = (tmp_path / "train").read_bytes()
    assert b"numpy._core" in raw
    (tmp_path / "old").write_bytes(raw.replace(b"numpy._core", b"numpy.core"))
    assert sorted(read_cifar(tmp_path / "old")) == ["000", "001"]

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (shutil.rmtree, (str(tmp_path / "victim"),))

    (tmp_path / "victim").mkdir()
    (tmp_path / "evil").write_bytes(pickle.dumps({b"data": Payload(), b"fine_labels": [0]}))
    with pytest.raises(DatasetError, match="refusing"):
        read_cifar(tmp_path / "evil")
    assert (tmp_path / "victim").is_dir()
    (tmp_path / "junk").write_bytes(b"\x00\x01garbage")
    with pytest.raises(DatasetError, match="junk"):
        read_cifar(tmp_path / "junk")
