"""Operator feedback: labels land on the journal's decisions, retained frames land in an MVTec-layout review
folder that ``trainer evaluate`` and ``trainer fit`` read as they are."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from products_support import backbone, frame_image, write_product

from linewatch.errors import CommandError
from linewatch.frames import DefectLocation, Verdict, VerdictKind
from linewatch.products.feedback import FeedbackRecorder, feedback_kind
from linewatch.publish.journal import Journal, JournalConfig
from linewatch.publish.payloads import ResultPayload
from trainer.cli import main as trainer_main
from trainer.train import save_checkpoint


def verdict(seq: int, kind: VerdictKind, product: str | None = "alpha") -> Verdict:
    return Verdict(
        seq=seq, frame_id=seq, verdict=kind, product_id=product,
        bundle_id=None if product is None else f"{product}@0123456789ab",
        score=None if kind is VerdictKind.NOT_INSPECTED else (2.0 if kind is VerdictKind.FAIL else 0.3),
        threshold=1.0, location=DefectLocation(5, 5), timestamp_ns=time.monotonic_ns(),
        acquired_ns=time.monotonic_ns(), reason="dropped" if kind is VerdictKind.NOT_INSPECTED else None,
    )


def frame(seq: int, defect: bool) -> np.ndarray:
    img = frame_image(seed=seq)
    if defect:
        img[20:34, 24:38] = 10  # a dark blot
    return img


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(JournalConfig(state_dir=tmp_path / "state", batch_ms=5, images_every_nth_pass=1))
    try:
        yield j
    finally:
        j.close()


def journal_frame(journal: Journal, seq: int, kind: VerdictKind, image: np.ndarray | None,
                  product: str | None = "alpha") -> None:
    """What the publishing stage does: journal the result, then store the frame's image."""
    journal.append(ResultPayload.from_verdict(verdict(seq, kind, product)))
    if image is not None and journal.image_wanted(kind):
        journal.store_image(seq, image)


def test_kinds_follow_verdict_and_label() -> None:
    assert feedback_kind("fail", "good") == "false_reject"
    assert feedback_kind("pass", "defect") == "miss"
    assert feedback_kind("pass", "good") == "confirmed_pass"
    assert feedback_kind("fail", "defect") == "confirmed_reject"
    assert feedback_kind("not_inspected", "good") == "not_inspected"


def test_labels_are_recorded_and_frames_sorted_into_the_review_layout(
    journal: Journal, tmp_path: Path
) -> None:
    review = tmp_path / "review"
    recorder = FeedbackRecorder(journal, review)
    journal_frame(journal, 0, VerdictKind.FAIL, frame(0, False))  # false reject
    journal_frame(journal, 1, VerdictKind.PASS, frame(1, True))  # miss
    journal_frame(journal, 2, VerdictKind.PASS, frame(2, False))  # confirmed pass
    journal_frame(journal, 3, VerdictKind.FAIL, frame(3, True))  # confirmed reject
    out = [recorder.record(0, "good", "scratch is only dust"), recorder.record(1, "defect", "missed blot"),
           recorder.record(2, "good"), recorder.record(3, "defect")]
    assert [o.kind for o in out] == ["false_reject", "miss", "confirmed_pass", "confirmed_reject"]
    root = review / "alpha"
    assert out[0].image == root / "train/good/000000000000.png"
    assert out[1].image == root / "test/defect/000000000001.png"
    assert out[2].image == root / "test/good/000000000002.png"
    assert out[3].image == root / "test/defect/000000000003.png"
    # The copies are the frames themselves.
    assert np.array_equal(cv2.imread(str(out[1].image), cv2.IMREAD_UNCHANGED), frame(1, True))
    journal.flush()
    record = journal.get(0)
    assert record is not None
    assert (record.feedback_label, record.feedback_note) == ("good", "scratch is only dust")
    log = [json.loads(line) for line in (root / "feedback.jsonl").read_text().splitlines()]
    assert [(e["seq"], e["kind"], e["image"]) for e in log] == [
        (0, "false_reject", "train/good/000000000000.png"),
        (1, "miss", "test/defect/000000000001.png"),
        (2, "confirmed_pass", "test/good/000000000002.png"),
        (3, "confirmed_reject", "test/defect/000000000003.png"),
    ]
    assert log[0]["bundle"] == "alpha@0123456789ab" and log[0]["score"] == 2.0


def test_a_relabelled_frame_moves_to_its_new_folder(journal: Journal, tmp_path: Path) -> None:
    recorder = FeedbackRecorder(journal, tmp_path / "review")
    journal_frame(journal, 7, VerdictKind.FAIL, frame(7, False))
    first = recorder.record(7, "good")
    second = recorder.record(7, "defect", "looked again: it is a defect")
    assert first.image is not None and not first.image.exists()
    assert second.image is not None and second.image.is_file() and second.kind == "confirmed_reject"
    assert sorted(p.name for p in (tmp_path / "review/alpha").rglob("*.png")) == ["000000000007.png"]


def test_unknown_seq_is_refused_and_a_frame_without_image_is_still_labelled(
    journal: Journal, tmp_path: Path
) -> None:
    recorder = FeedbackRecorder(journal, tmp_path / "review")
    with pytest.raises(CommandError, match="no decision with seq 99"):
        recorder.record(99, "good")
    journal_frame(journal, 4, VerdictKind.PASS, None)  # a pass whose image was not kept
    outcome = recorder.record(4, "defect", "operator saw a crack")
    assert outcome.kind == "miss" and outcome.image is None
    assert outcome.no_image_reason is not None and "no image" in outcome.no_image_reason
    journal.flush()
    record = journal.get(4)
    assert record is not None and record.feedback_label == "defect"
    log = (tmp_path / "review/alpha/feedback.jsonl").read_text()
    assert '"image": null' in log and "operator saw a crack" in log
    journal_frame(journal, 5, VerdictKind.NOT_INSPECTED, frame(5, False), product=None)
    assert recorder.record(5, "good").image is None  # no product: no review folder to put it in


def test_trainer_evaluate_and_fit_read_the_review_folder(journal: Journal, tmp_path: Path) -> None:
    products = tmp_path / "products"
    bundle = write_product(products, "alpha", backbone(1), threshold=1.0)
    recorder = FeedbackRecorder(journal, tmp_path / "review")
    labelled = [(VerdictKind.FAIL, "good", False)] * 6 + [(VerdictKind.PASS, "good", False)] * 3
    labelled += [(VerdictKind.PASS, "defect", True), (VerdictKind.FAIL, "defect", True)]
    for seq, (kind, label, defect) in enumerate(labelled):
        journal_frame(journal, seq, kind, frame(seq, defect))
        recorder.record(seq, label)  # type: ignore[arg-type]
    data = tmp_path / "review" / "alpha"
    report = tmp_path / "report"
    assert trainer_main(["evaluate", "--bundle", str(bundle.path), "--data", str(data), "--out", str(report),
                         "--threads", "1"]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    assert (metrics["n_good"], metrics["n_defect"]) == (3, 2)
    assert metrics["image_auroc"] is not None
    # A refit from what the line saw: the false rejects are the good images.
    out = tmp_path / "refit"
    assert trainer_main(["fit", "--good", str(data / "train" / "good"), "--product", "alpha",
                         "--out", str(out), "--backbone", str(_checkpoint(tmp_path)),
                         "--input-size", "64x64", "--threads", "1"]) == 0
    assert (out / "alpha" / "bundle.json").is_file()


def _checkpoint(tmp_path: Path) -> Path:
    """The test backbone as a checkpoint file ``trainer fit --backbone`` loads."""
    net = backbone(1)
    path = tmp_path / "backbone.pt"
    save_checkpoint(path, {"state_dict": net.state_dict(), "h": net.h, "provenance": {}})
    return path
