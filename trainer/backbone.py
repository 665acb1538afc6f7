"""Loading a backbone: a checkpoint file, the shipped default, several networks stacked, and the line bank.

A checkpoint is a dict saved with ``torch.save``: at least ``state_dict``, ``h`` and ``provenance``
(plus ``config`` and, for a finished run, ``summary``); ``trainer.train`` writes them. They are loaded
with ``weights_only=True``: a checkpoint cannot run code.

Backbone names (``trainer fit --backbone``, ``load_backbone``):

- ``default``: the shipped trained network and an untrained one of the same width stacked
  (``FeatureNet.stack``), plus the fixed line bank (``trainer.linebank``), the whitened member
  (``trainer.whitened``), the grey-level extremes member (``trainer.extremes``) and the context member
  (``trainer.context``), the last three fitted per product by ``trainer fit``. The trained network has
  learned to ignore what varies between good parts and in doing so misses faint local marks; an untrained
  network's random filters keep every local intensity detail; the line bank integrates thin lines over up to
  ~±32 px, longer than the networks' 32-px field; the whitened member looks for blobs and short lines in the
  texture's own noise (kept only where that noise is Gaussian); the extremes member, kept where the whitened
  one is not, finds single pixels beyond the good parts' grey levels (thin cracks); the context member asks
  whether a place is as bright as its surroundings predict (stains that keep the texture). Each is scored
  against its own prototype and the maps are averaged, which hid fewer defects than any fewer of them
  (benchmarks/experiments/ensemble.py, linebank.py, fusion.py; README "Accuracy").
- ``default-trained`` / ``default-untrained``: one of the two networks; ``lines``: the line bank,
  ``whitened``: the whitened member, ``extremes``: the grey-level extremes member, ``context``: the context
  member (each only in a stack, after at least one network, at most once, in this order).
- a checkpoint path; ``A+B+...``: any of these stacked, in order (equal widths), e.g.
  ``default-trained+default-untrained`` (the default without the line bank).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from linewatch.bundle.manifest import MAX_MEMBERS
from linewatch.errors import LinewatchError
from trainer.context import ContextMember
from trainer.extremes import ExtremesMember
from trainer.linebank import LineBank
from trainer.model import Backbone, FeatureNet
from trainer.train import code_provenance, load_checkpoint, save_checkpoint
from trainer.whitened import WhitenedMember

BACKBONE_DIR = Path(__file__).resolve().parent / "backbones"
DEFAULT = "default"
DEFAULT_TRAINED = "default-trained"
DEFAULT_UNTRAINED = "default-untrained"
LINES = "lines"  # the line bank with its default scales (trainer.linebank.DEFAULT_SCALES)
WHITENED = "whitened"  # the whitened member (trainer.whitened), its kernels fitted per product by trainer fit
EXTREMES = "extremes"  # the grey-level extremes member (trainer.extremes), its spread fitted per product
CONTEXT = "context"  # the context member (trainer.context), its weights fitted per product by trainer fit
# Members beside the networks, in the order they follow them.
BESIDE_NETWORKS = (LINES, WHITENED, EXTREMES, CONTEXT)
UNTRAINED_SEED = 0  # the seed the shipped untrained networks were drawn with (chosen before measuring)


class BackboneError(LinewatchError):
    """A backbone checkpoint is missing, unreadable or not what was asked for."""


def default_backbone_path(h: int = 16) -> Path:
    """The shipped trained network of width ``h``."""
    return BACKBONE_DIR / f"default_h{h}.pt"


def untrained_backbone_path(h: int = 16) -> Path:
    """The shipped untrained network of width ``h`` (the default's second member)."""
    return BACKBONE_DIR / f"untrained_h{h}.pt"


def untrained_checkpoint(h: int, seed: int = UNTRAINED_SEED) -> dict[str, Any]:
    """A checkpoint of an untrained FeatureNet(h): PyTorch's default initialisation after
    ``torch.manual_seed(seed)``. Written to a file once and shipped, so the weights do not depend on the
    PyTorch version a fit runs with."""
    with torch.random.fork_rng():  # the caller's random state is left as it was
        torch.manual_seed(seed)
        net = FeatureNet(h)
    return {
        "format": 1,
        "state_dict": net.state_dict(),
        "h": h,
        "config": {"h": h},
        "provenance": {"untrained": True, "seed": seed, "init": "PyTorch default Conv2d initialisation",
                       "code": code_provenance()},
    }


def write_untrained_backbone(path: Path, h: int, seed: int = UNTRAINED_SEED) -> Path:
    save_checkpoint(path, untrained_checkpoint(h, seed))
    return path


def _shipped(path: Path, what: str, advice: str) -> Path:
    """``path`` if it is installed; else an error naming the file and what to do about it."""
    if not path.is_file():
        raise BackboneError(f"the default {what} is not installed: {path} does not exist; {advice}")
    return path


def _shipped_trained(h: int) -> Path:
    return _shipped(default_backbone_path(h), f"backbone (h={h})", "train one with `trainer pretrain` and "
                    "pass its path, or install a release that ships it")


def _shipped_untrained(h: int) -> Path:
    return _shipped(untrained_backbone_path(h), f"untrained backbone (h={h})", "write it with trainer."
                    "backbone.write_untrained_backbone (trainer/backbones/README.md) or fit with --backbone "
                    "default-trained")


def _parts(name: str, width: int) -> list[Path | str]:
    """The checkpoint files (and ``LINES``) a backbone name stands for, in stacking order. Only a name that
    is not an existing file is split at '+', so installs and checkpoints under paths with a '+' in them still
    work."""
    if name == DEFAULT:
        return [_shipped_trained(width), _shipped_untrained(width), *BESIDE_NETWORKS]
    if name == DEFAULT_TRAINED:
        return [_shipped_trained(width)]
    if name == DEFAULT_UNTRAINED:
        return [_shipped_untrained(width)]
    if name in BESIDE_NETWORKS and not Path(name).is_file():
        return [name]
    if "+" not in name or Path(name).is_file():
        return [Path(name)]
    parts = name.split("+")
    if any(not p for p in parts):
        raise BackboneError(f"{name}: an empty name in a '+' stack of backbones")
    return [f for p in parts for f in _parts(p, width)]


def _read_file(path: Path, h: int | None) -> tuple[FeatureNet, dict[str, Any]]:
    if path.is_dir():
        raise BackboneError(f"{path}: a directory, not a backbone checkpoint file")
    if not path.is_file():
        raise BackboneError(f"{path}: backbone checkpoint not found (a checkpoint file written by trainer "
                            f"pretrain, or one of {DEFAULT}, {DEFAULT_TRAINED}, {DEFAULT_UNTRAINED}, "
                            f"A+B{''.join(f'[+{m}]' for m in BESIDE_NETWORKS)})")
    try:
        payload = load_checkpoint(path)
    except Exception as exc:  # torch raises many types for a bad file; all mean "unusable"
        raise BackboneError(f"{path}: not a readable backbone checkpoint (a file written by trainer pretrain "
                            f"is expected; {type(exc).__name__}: {exc})") from exc
    width = payload["h"]
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise BackboneError(f"{path}: the checkpoint's feature width h={width!r} is not a whole number >= 1")
    if h is not None and width != h:
        raise BackboneError(f"{path}: backbone has h={width}, but h={h} was asked for")
    net = FeatureNet(width)
    try:
        net.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise BackboneError(f"{path}: weights do not fit a FeatureNet(h={payload['h']}): {exc}") from exc
    meta = {k: v for k, v in payload.items() if k not in ("state_dict", "optimizer")}
    meta["path"] = str(path)
    return net.eval(), meta


def read_backbone(path_or_default: str | Path, h: int | None = None) -> tuple[Backbone, dict[str, Any]]:
    """(backbone in eval mode, the checkpoint dict without its tensors) — for callers that record where
    their backbone came from (a product bundle's provenance). A stack's dict lists its networks' dicts under
    ``members`` and their files, joined by ``+``, under ``path``; a line bank is described under
    ``line_bank`` and named ``lines`` in ``path``, a whitened, an extremes and a context member (unfitted:
    ``trainer fit`` fits them) under ``whitened``, ``extremes`` and ``context`` and named so."""
    name = str(path_or_default)
    parts = _parts(name, h or 16)
    already = f" ('{DEFAULT}' already includes them)" if DEFAULT in name.split("+") else ""
    # The members beside the networks come after them, each at most once, in BESIDE_NETWORKS' order.
    beside = [p for p in parts if isinstance(p, str)]
    first = min((i for i, p in enumerate(parts) if isinstance(p, str)), default=len(parts))
    if (any(isinstance(p, Path) for p in parts[first:]) or len(set(beside)) < len(beside)
            or beside != [m for m in BESIDE_NETWORKS if m in beside]):
        raise BackboneError(f"{name}: the members beside the networks ({', '.join(BESIDE_NETWORKS)}) come "
                            f"after them, each once, in that order{already}")
    if not any(isinstance(p, Path) for p in parts):
        what = f"{beside[0]} is a member" if len(beside) == 1 else f"{', '.join(beside)} are members"
        raise BackboneError(f"{name}: {what} beside networks, not a backbone on its own; use e.g. "
                            f"default-trained+{beside[0]}")
    lines = LineBank().eval() if LINES in beside else None
    files = [p for p in parts if isinstance(p, Path)]
    if len(files) > MAX_MEMBERS:
        raise BackboneError(f"{name}: {len(files)} networks stacked; a bundle holds at most {MAX_MEMBERS}")
    read = []
    for file in files:
        try:
            read.append(_read_file(file, h))
        except BackboneError as exc:
            raise BackboneError(f"{exc} (in the stack {name})" if len(files) > 1 else str(exc)) from exc
    widths = {net.h for net, _ in read}
    if len(widths) > 1:
        raise BackboneError(f"{name}: stacked backbones need one width, got h={sorted(widths)}")
    if len(read) == 1:
        net, meta = read[0]
    else:
        net, meta = FeatureNet.stack([n for n, _ in read]), {
            "h": read[0][0].h,
            "members": [m for _, m in read],
            "path": "+".join(m["path"] for _, m in read),
        }
    if lines is not None:
        meta = {**meta, "line_bank": lines.describe(), "path": f"{meta['path']}+{LINES}"}
    # Their kernels and weights come from trainer fit.
    white = WhitenedMember().eval() if WHITENED in beside else None
    if white is not None:
        meta = {**meta, "whitened": white.describe(), "path": f"{meta['path']}+{WHITENED}"}
    extremes = ExtremesMember().eval() if EXTREMES in beside else None
    if extremes is not None:
        meta = {**meta, "extremes": extremes.describe(), "path": f"{meta['path']}+{EXTREMES}"}
    member = ContextMember().eval() if CONTEXT in beside else None
    if member is not None:
        meta = {**meta, "context": member.describe(), "path": f"{meta['path']}+{CONTEXT}"}
    return Backbone(net, lines, member, white, extremes).eval(), meta


def load_backbone(path_or_default: str | Path, h: int | None = None) -> Backbone:
    """The backbone a name stands for (module docstring); ``h``, when given, is the width every network
    must have (16 when not given for the shipped ones)."""
    return read_backbone(path_or_default, h)[0]
