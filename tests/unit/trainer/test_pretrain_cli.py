"""``trainer pretrain`` from a mix of every reader; the checkpoint records its data and can be resumed."""

from __future__ import annotations

import argparse
import dataclasses
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from trainer.backbone import read_backbone
from trainer.cli import main
from trainer.pretrain import add_arguments, config_from_args, gather, square_tiles

TINY = ["--h", "4", "--rounds", "1", "--epochs", "1", "--triplets-per-round", "256", "--batch-size", "128"]
TINY += ["--val-triplets", "64", "--scales", "64", "--threads", "1", "--no-progress", "--p-local", "0.2"]


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, Path]:
    mvtec = tmp_path / "mvtec"
    assert main(["synth", "--out", str(mvtec), "--families", "weave", "--n-train", "3", "--n-test-good", "1",
                 "--n-test-defect", "1", "--size", "64"]) == 0  # fmt: skip
    textures = tmp_path / "textures"
    for cls in ("cork", "felt"):
        (textures / cls).mkdir(parents=True)
        for i in range(3):
            image = np.random.default_rng([len(cls), i]).integers(0, 256, (48, 48), dtype=np.uint8)
            cv2.imwrite(str(textures / cls / f"{i}.png"), image)
    (textures / "felt" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    cifar = tmp_path / "cifar-train"
    data = np.random.default_rng(0).integers(0, 256, (12, 3072), dtype=np.uint8)
    cifar.write_bytes(pickle.dumps({b"data": data, b"fine_labels": [0, 1, 2] * 4}))
    return {"mvtec": mvtec, "textures": textures, "cifar": cifar}


def test_pretrain_from_every_source_records_provenance(
    tmp_path: Path, sources: dict[str, Path], shared_data: Path
) -> None:
    out = tmp_path / "backbone.pt"
    args = [
        "pretrain",
        "--out",
        str(out),
        "--mvtec",
        str(sources["mvtec"]),
        "--textures",
        str(sources["textures"]),
    ]
    args += [
        "--cifar",
        str(sources["cifar"]),
        "--synthetic",
        "2",
        "--synthetic-images",
        "3",
        "--synthetic-size",
        "64",
    ]
    args += [
        "--dagm",
        str(shared_data / "dagm2007-samples"),
        "--dagm-classes",
        "1",
        "2",
        "--seed",
        "5",
        *TINY,
    ]
    assert main(args) == 0

    net, meta = read_backbone(out)
    assert net.h == 4
    prov = meta["provenance"]
    kinds = {s["kind"]: s for s in prov["sources"]}
    assert set(kinds) == {"mvtec", "dagm", "textures", "cifar", "synthetic"}
    assert kinds["mvtec"]["classes"] == {"mvtec:mvtec": 3}
    assert kinds["dagm"]["classes"] == {"dagm:Class1": 2, "dagm:Class2": 2}  # good Train images only
    assert kinds["textures"]["classes"] == {"textures:cork": 3, "textures:felt": 3}
    assert len(kinds["cifar"]["classes"]) == 3 and len(kinds["synthetic"]["classes"]) == 2
    assert [Path(s["path"]).name for s in prov["skipped"]] == ["broken.png"]
    assert prov["seed"] == 5 and prov["arguments"]["seed"] == 5
    assert "git_revision" in prov["code"]
    assert meta["config"]["h"] == 4 and meta["summary"]["steps"] == 2
    assert (tmp_path / "backbone.pt.run" / "log.csv").is_file()


def test_pretrain_resumes_and_reports_bad_input(tmp_path: Path, sources: dict[str, Path]) -> None:
    out = tmp_path / "b.pt"
    base = ["pretrain", "--out", str(out), "--textures", str(sources["textures"]), *TINY]
    assert main(base) == 0
    first = torch.load(out, weights_only=True)
    assert main([*base, "--rounds", "2", "--resume"]) == 0
    second = torch.load(out, weights_only=True)
    assert second["summary"]["steps"] == 2 * first["summary"]["steps"]
    assert second["summary"]["rounds"] == 2

    assert main(["pretrain", "--out", str(out)]) == 2  # no data at all
    assert main(["pretrain", "--out", str(out), "--mvtec", str(tmp_path / "nowhere")]) == 2
    assert (
        main(["pretrain", "--out", str(out), "--synthetic", "1", "--p-noise", "0.9", "--p-local", "0.5"]) == 2
    )


def test_local_contrast_flag_reaches_the_sampler_and_the_checkpoint(
    tmp_path: Path, sources: dict[str, Path]
) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    default = config_from_args(parser.parse_args(["--out", "x.pt"]))
    assert default.triplets.local_contrast == "absolute"  # unchanged behaviour unless asked
    relative = config_from_args(parser.parse_args(["--out", "x.pt", "--local-contrast", "relative"]))
    assert relative.triplets == dataclasses.replace(default.triplets, local_contrast="relative")
    with pytest.raises(SystemExit):
        parser.parse_args(["--out", "x.pt", "--local-contrast", "loud"])

    out = tmp_path / "relative.pt"
    base = ["pretrain", "--out", str(out), "--textures", str(sources["textures"]), *TINY]
    assert main([*base, "--local-contrast", "relative"]) == 0
    _, meta = read_backbone(out)
    assert meta["config"]["triplets"]["local_contrast"] == "relative"
    # A run cannot silently continue with the other kind of negatives.
    assert main([*base, "--rounds", "2", "--resume"]) == 2


def test_mvtec_weight_tiles_and_synthetic_styles(tmp_path: Path) -> None:
    product = tmp_path / "long" / "train" / "good"
    product.mkdir(parents=True)
    for i in range(2):  # 100×250 parts: as long as a KolektorSDD one
        cv2.imwrite(str(product / f"{i}.png"), np.full((250, 100), 40 * i, np.uint8))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    common = [
        "--out",
        "x.pt",
        "--mvtec",
        str(tmp_path / "long"),
        "--synthetic",
        "9",
        "--synthetic-images",
        "1",
    ]
    common += ["--synthetic-size", "32"]

    plain = gather(parser.parse_args(common))
    (long_class,) = [c for c in plain.classes if c.name == "mvtec:long"]
    assert long_class.weight == 1.0 and [img.shape for img in long_class.images] == [(250, 100)] * 2
    synthetic = sorted(c.name for c in plain.classes if c.name.startswith("synthetic:"))
    assert synthetic[:2] == ["synthetic:brick-5", "synthetic:fractal-1"]  # seed 0: styles 0, 1, …

    tiled = gather(parser.parse_args([*common, "--mvtec-weight", "12", "--tile", "100"]))
    (long_class,) = [c for c in tiled.classes if c.name == "mvtec:long"]
    assert long_class.weight == 12.0
    # Three 100 px squares at native resolution cover each part, first and last flush with its ends.
    assert [img.shape for img in long_class.images] == [(100, 100)] * 6
    assert all(c.weight == 1.0 for c in tiled.classes if c is not long_class)
    assert {c.name for c in tiled.classes} == {c.name for c in plain.classes}

    apart = gather(parser.parse_args([*common, "--synthetic-style-base", "10000"]))
    styles = {int(c.name.rsplit("-", 1)[1]) for c in apart.classes if c.name.startswith("synthetic:")}
    assert styles == set(range(10000, 10009))

    image = np.arange(250 * 100, dtype=np.int64).reshape(250, 100)
    tiles = square_tiles(image, 100)
    assert [int(t[0, 0]) // 100 for t in tiles] == [0, 75, 150]  # rows 0, 75, 150: covers 0–249
    assert square_tiles(image, 400)[0].shape == (100, 100)  # at most the short side
    assert main(["pretrain", *common, "--mvtec-weight", "0"]) == 2
