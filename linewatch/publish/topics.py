"""MQTT topic names of one station: everything lives under ``<topic_prefix>/<station>`` (DESIGN 3.4).

    <prefix>/<station>/status             retained; last will "offline"          StatusPayload
    <prefix>/<station>/result             QoS 1, one per acquired frame           ResultPayload
    <prefix>/<station>/reject             QoS 1, every result that is not a pass  RejectPayload
    <prefix>/<station>/heatmap            PNG; MQTT 5 properties carry seq        (bytes)
    <prefix>/<station>/heatmap/<seq>      the same on MQTT 3.1.1 (no properties there)
    <prefix>/<station>/product            retained product state                 ProductStatePayload
    <prefix>/<station>/product/set        command in: activate a product          ProductCommand
    <prefix>/<station>/product/prepare    command in: load + warm up beside       ProductCommand
    <prefix>/<station>/product/response   one answer per command                  CommandResponse
    <prefix>/<station>/feedback           command in: operator label for a seq    FeedbackPayload
    <prefix>/<station>/stats              periodic counters                       StatsPayload

A subscriber that wants heatmaps on either protocol subscribes ``<prefix>/<station>/heatmap/#``, which
matches both ``heatmap`` and ``heatmap/<seq>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A topic level must not contain MQTT wildcards or separators; keep ids boring so they are safe in topics,
# file names and logs alike.
_LEVEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_PREFIX = re.compile(r"^[A-Za-z0-9._-]{1,64}(/[A-Za-z0-9._-]{1,64}){0,7}$")


def validate_station(station: str) -> str:
    """Return ``station`` if it is usable as one topic level, else raise ValueError naming the rule."""
    if not _LEVEL.match(station):
        raise ValueError(
            f"station {station!r} must be 1-64 characters of letters, digits, '.', '_' or '-' "
            "and start with a letter or digit (it becomes one MQTT topic level)"
        )
    return station


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a wildcard-free topic prefix (levels separated by '/'), else ValueError."""
    if not _PREFIX.match(prefix):
        raise ValueError(
            f"topic prefix {prefix!r} must be 1-8 '/'-separated levels of letters, digits, '.', '_' or '-' "
            "(no wildcards '+'/'#', no leading or trailing '/')"
        )
    return prefix


@dataclass(frozen=True, slots=True)
class Topics:
    """Every topic name of one station. Build with ``Topics.for_station(prefix, station)``."""

    base: str

    @classmethod
    def for_station(cls, prefix: str, station: str) -> Topics:
        return cls(base=f"{validate_prefix(prefix)}/{validate_station(station)}")

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def result(self) -> str:
        return f"{self.base}/result"

    @property
    def reject(self) -> str:
        return f"{self.base}/reject"

    @property
    def heatmap(self) -> str:
        return f"{self.base}/heatmap"

    def heatmap_with_seq(self, seq: int) -> str:
        """MQTT 3.1.1 has no user properties, so there the seq travels as the last topic level."""
        return f"{self.base}/heatmap/{seq}"

    @property
    def product(self) -> str:
        return f"{self.base}/product"

    @property
    def product_set(self) -> str:
        return f"{self.base}/product/set"

    @property
    def product_prepare(self) -> str:
        return f"{self.base}/product/prepare"

    @property
    def product_response(self) -> str:
        return f"{self.base}/product/response"

    @property
    def feedback(self) -> str:
        return f"{self.base}/feedback"

    @property
    def stats(self) -> str:
        return f"{self.base}/stats"

    @property
    def commands(self) -> tuple[str, str, str]:
        """The topics the daemon subscribes to (product/set, product/prepare, feedback)."""
        return (self.product_set, self.product_prepare, self.feedback)
