"""``trainer synth``: MVTec-layout products with defects and masks, reproducible under a seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainer.cli import main
from trainer.data.images import read_image
from trainer.data.mvtec import MvtecDataset, find_mvtec_roots, read_mask


def test_synth_writes_one_mvtec_product_per_family_with_masks(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    args = ["synth", "--out", str(out), "--families", "weave", "grass", "--n-train", "3"]
    args += ["--n-test-good", "2", "--n-test-defect", "1", "--size", "96", "--seed", "4"]
    assert main(args) == 0
    roots = find_mvtec_roots(out)
    assert [r.name for r in roots] == ["grass", "weave"]
    for root in roots:
        data = MvtecDataset(root)
        assert len(data.train_good()) == 3
        samples = data.test_samples()
        assert sum(not s.is_defective for s in samples) == 2
        assert sorted(data.defect_types()) == sorted(
            ["scratch", "spot", "crack", "dent", "missing_pattern", "noise_patch"]
        )
        for sample in (s for s in samples if s.is_defective):
            image = read_image(sample.path)
            assert image.shape == (96, 96) and image.dtype == np.uint8
            mask = read_mask(sample, image.shape)
            assert mask is not None and 0 < (mask > 0).mean() < 0.1
        assert (root / "synth.json").is_file()

    again = tmp_path / "again"
    assert main([*args[:2], str(again), *args[3:]]) == 0
    first = (out / "weave" / "test" / "crack" / "000.png").read_bytes()
    assert first == (again / "weave" / "test" / "crack" / "000.png").read_bytes()


def test_synth_single_family_is_the_product_root(tmp_path: Path) -> None:
    args = ["synth", "--out", str(tmp_path), "--families", "fractal", "--defects", "spot"]
    assert main([*args, "--n-train", "2", "--n-test-good", "1", "--n-test-defect", "2", "--size", "64"]) == 0
    data = MvtecDataset(tmp_path)
    assert data.defect_types() == ["spot"] and len(data.test_samples()) == 3
