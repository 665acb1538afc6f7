"""Operator feedback: ``{seq, label: good|defect, note}`` → the decision in the journal is labelled, and the
frame (if the journal kept its image) is copied into a review folder in MVTec-AD layout.

What a label means depends on the verdict it corrects or confirms:

    verdict        label    kind               copied to <review_dir>/<product>/
    fail           good     false_reject       train/good/    the good variation the prototype lacks
    pass           defect   miss               test/defect/
    pass           good     confirmed_pass     test/good/
    fail           defect   confirmed_reject   test/defect/
    not_inspected  good     not_inspected      train/good/
    not_inspected  defect   not_inspected      test/defect/

So the folder is read directly by the trainer:

* ``trainer fit --good <review_dir>/<product>/train/good`` (with the product's original good images, for a
  refit that knows what the line saw) — false rejects are exactly the good parts the prototype lacked;
* ``trainer evaluate --bundle ... --data <review_dir>/<product>`` — how a bundle separates the goods and
  defects operators confirmed (train/good, test/good and test/defect always exist once a label arrived).

A frame goes into one folder only: a relabelled seq moves. Files are named ``<seq>.png`` (12 digits) and
written atomically; ``feedback.jsonl`` next to the folders records every label (seq, verdict, score, bundle,
kind, note, where the image went), for the quality engineer's audit.

Only frames whose image was retained can be copied: the journal keeps rejects and every
``journal.images_every_nth_pass``-th pass, within ``journal.images_max_mb``. Without an image the label is
still recorded in the journal and in feedback.jsonl.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from linewatch.bundle.registry import validate_product_id
from linewatch.errors import BundleError, CommandError
from linewatch.publish.journal import Journal, JournalRecord

log = logging.getLogger(__name__)

Label = Literal["good", "defect"]
FeedbackKind = Literal["false_reject", "miss", "confirmed_pass", "confirmed_reject", "not_inspected"]
LOG_NAME = "feedback.jsonl"
# Every folder the trainer looks for, created together so that the layout is complete from the first label.
REVIEW_FOLDERS = (("train", "good"), ("test", "good"), ("test", "defect"))


def feedback_kind(verdict: str, label: str) -> FeedbackKind:
    """What an operator's label says about a verdict (see the module table)."""
    if verdict == "pass":
        return "confirmed_pass" if label == "good" else "miss"
    if verdict == "fail":
        return "false_reject" if label == "good" else "confirmed_reject"
    return "not_inspected"


def review_folder(kind: FeedbackKind, label: str) -> tuple[str, str]:
    """(split, class) of the MVTec-AD layout a labelled frame goes to."""
    if kind in ("false_reject",) or (kind == "not_inspected" and label == "good"):
        return ("train", "good")
    if kind == "confirmed_pass":
        return ("test", "good")
    return ("test", "defect")


@dataclass(frozen=True, slots=True)
class FeedbackOutcome:
    seq: int
    label: Label
    kind: FeedbackKind
    product_id: str | None
    image: Path | None  # the copy in the review folder, None when there was nothing to copy
    no_image_reason: str | None = None


class FeedbackRecorder:
    """Applies operator labels to journal decisions and fills the review folder (thread-safe enough for the
    one command thread that calls it)."""

    def __init__(self, journal: Journal, review_dir: Path) -> None:
        self.journal = journal
        self.review_dir = review_dir
        self.recorded = 0
        self.images_copied = 0

    def _lookup(self, seq: int) -> JournalRecord:
        record = self.journal.get(seq)
        if record is None:
            self.journal.flush()  # the decision may still wait in the writer's batch
            record = self.journal.get(seq)
        if record is None:
            raise CommandError(
                f"no decision with seq {seq} in the journal (not made yet, or removed by retention)"
            )
        return record

    def record(self, seq: int, label: Label, note: str = "") -> FeedbackOutcome:
        """Label the decision ``seq``; CommandError when there is no such decision. The answer is ok even
        when no image could be copied (``no_image_reason`` says why)."""
        record = self._lookup(seq)
        if not self.journal.set_feedback(seq, label, note):
            raise CommandError(f"seq {seq}: the decision vanished from the journal while labelling it")
        result = record.result
        kind = feedback_kind(result.verdict, label)
        product = result.product
        image: Path | None = None
        reason: str | None = None
        if product is None:
            reason = "the frame was inspected with no product: it belongs to no review folder"
        elif record.image_path is None:
            reason = (
                f"the journal kept no image of seq {seq} (it keeps rejects and every "
                "journal.images_every_nth_pass-th pass)"
            )
        elif not record.image_path.is_file():
            reason = f"the image of seq {seq} was already removed from the bounded image store"
        else:
            image = self._copy(product, seq, record.image_path, review_folder(kind, label))
        if product is not None:
            self._append_log(product, record, label, kind, note, image, reason)
        self.recorded += 1
        log.info("feedback on seq %d: %s (%s)%s", seq, label, kind, "" if image else f"; {reason}")
        return FeedbackOutcome(seq, label, kind, product, image, reason)

    def _product_dir(self, product: str) -> Path:
        try:
            validate_product_id(product)
        except BundleError as exc:
            raise CommandError(f"seq has an unusable product id: {exc}") from exc
        root = self.review_dir / product
        for split, cls in REVIEW_FOLDERS:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
        return root

    def _copy(self, product: str, seq: int, source: Path, folder: tuple[str, str]) -> Path:
        root = self._product_dir(product)
        name = f"{seq:012d}{source.suffix or '.png'}"
        target = root / folder[0] / folder[1] / name
        for split, cls in REVIEW_FOLDERS:  # a relabelled frame moves: one folder only
            other = root / split / cls / name
            if other != target:
                other.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".", suffix=".part")
        os.close(fd)
        try:
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)  # a reader never sees half an image
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise CommandError(f"cannot copy the image of seq {seq} to {target}: {exc}") from exc
        self.images_copied += 1
        return target

    def _append_log(
        self, product: str, record: JournalRecord, label: str, kind: str, note: str, image: Path | None,
        reason: str | None,
    ) -> None:
        result = record.result
        line = {
            "seq": result.seq,
            "frame_id": result.frame_id,
            "acquired_unix_ns": result.acquired_unix_ns,
            "product": result.product,
            "bundle": result.bundle,
            "verdict": result.verdict,
            "score": result.score,
            "threshold": result.threshold,
            "label": label,
            "kind": kind,
            "note": note,
            "image": None if image is None else image.relative_to(self.review_dir / product).as_posix(),
            "no_image_reason": reason,
            "labelled_unix_ns": time.time_ns(),
        }
        path = self._product_dir(product) / LOG_NAME
        try:
            with path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(line) + "\n")
        except OSError as exc:
            raise CommandError(f"cannot append to {path}: {exc}") from exc
