"""The threshold decision: a score above the bundle's threshold is a fail."""

from __future__ import annotations

import math

from linewatch.frames import VerdictKind


def decide(score: float, threshold: float) -> tuple[VerdictKind, str | None]:
    """Verdict for one image score, with a reason when the frame cannot be judged.

    A score equal to the threshold passes (the calibration picks the threshold as the highest acceptable
    good-part score). A non-finite score (NaN/inf from a damaged model or input) is never a pass: the part
    is ``not_inspected`` with the reason, which the line treats as a reject.
    """
    if not math.isfinite(score):
        return VerdictKind.NOT_INSPECTED, f"score is not finite ({score})"
    if not math.isfinite(threshold):
        return VerdictKind.NOT_INSPECTED, f"threshold is not finite ({threshold})"
    return (VerdictKind.FAIL if score > threshold else VerdictKind.PASS), None
