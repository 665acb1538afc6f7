"""Two FeatureNet(h) checkpoints → one FeatureNet(2h) whose features are both networks' features side by
side (block-diagonal weights: exactly the two networks, run as one graph). An ensemble that the bundle,
ONNX export and the daemon treat as an ordinary h=2h backbone.

    .venv/bin/python benchmarks/experiments/merge.py A.pt B.pt OUT.pt
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from trainer.model import FeatureNet


def load(path: str) -> FeatureNet:
    if path.startswith("random:"):
        torch.manual_seed(int(path.split(":")[1]))
        return FeatureNet(16)
    ck = torch.load(path, map_location="cpu", weights_only=False)
    net = FeatureNet(int(ck["h"]))
    net.load_state_dict(ck["state_dict"])
    return net


def merge(a: FeatureNet, b: FeatureNet) -> FeatureNet:
    h = a.h + b.h
    out = FeatureNet(h)
    sa, sb, so = a.state_dict(), b.state_dict(), out.state_dict()
    with torch.no_grad():
        for name, t in so.items():
            ta, tb = sa[name], sb[name]
            t.zero_()
            if name.endswith("bias") or name == "stem.weight":
                t[: a.h], t[a.h :] = ta, tb
            else:  # h→h convolutions: block diagonal
                t[: a.h, : a.h], t[a.h :, a.h :] = ta, tb
    out.load_state_dict(so)
    return out


if __name__ == "__main__":
    a, b = load(sys.argv[1]), load(sys.argv[2])
    net = merge(a, b)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net(x), torch.cat([a(x), b(x)], 1), atol=1e-5)
    torch.save({"state_dict": net.state_dict(), "h": net.h, "provenance": {"merged": sys.argv[1:3]}}, sys.argv[3])
    print(f"wrote {sys.argv[3]} (h={net.h})")
