"""Loading a trained feature network: a checkpoint file, or the default backbone shipped in the package.

A checkpoint is a dict saved with ``torch.save``: at least ``state_dict``, ``h`` and ``provenance``
(plus ``config`` and, for a finished run, ``summary``); ``trainer.train`` writes them. They are loaded
with ``weights_only=True``: a checkpoint cannot run code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from linewatch.errors import LinewatchError
from trainer.model import FeatureNet
from trainer.train import load_checkpoint

BACKBONE_DIR = Path(__file__).resolve().parent / "backbones"
DEFAULT = "default"


class BackboneError(LinewatchError):
    """A backbone checkpoint is missing, unreadable or not what was asked for."""


def default_backbone_path(h: int = 16) -> Path:
    return BACKBONE_DIR / f"default_h{h}.pt"


def read_backbone(path_or_default: str | Path, h: int | None = None) -> tuple[FeatureNet, dict[str, Any]]:
    """(network in eval mode, the checkpoint dict without its tensors) — for callers that record where
    their backbone came from (a product bundle's provenance)."""
    if str(path_or_default) == DEFAULT:
        path = default_backbone_path(h or 16)
        if not path.is_file():
            raise BackboneError(
                f"the default backbone (h={h or 16}) is not installed: {path} does not exist; train one with "
                "`trainer pretrain` and pass its path, or install a release that ships it"
            )
    else:
        path = Path(path_or_default)
        if not path.is_file():
            raise BackboneError(f"{path}: backbone checkpoint not found")
    try:
        payload = load_checkpoint(path)
    except Exception as exc:  # torch raises many types for a bad file; all mean "unusable"
        raise BackboneError(f"{path}: not a readable backbone checkpoint ({exc})") from exc
    if h is not None and int(payload["h"]) != h:
        raise BackboneError(f"{path}: backbone has h={payload['h']}, but h={h} was asked for")
    net = FeatureNet(int(payload["h"]))
    try:
        net.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise BackboneError(f"{path}: weights do not fit a FeatureNet(h={payload['h']}): {exc}") from exc
    meta = {k: v for k, v in payload.items() if k not in ("state_dict", "optimizer")}
    meta["path"] = str(path)
    return net.eval(), meta


def load_backbone(path_or_default: str | Path, h: int | None = None) -> FeatureNet:
    """The feature network from a checkpoint path, or ``"default"`` for the shipped default of width
    ``h`` (16 when not given). ``h``, when given, must match the checkpoint."""
    return read_backbone(path_or_default, h)[0]
