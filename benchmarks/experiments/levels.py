"""Which depth of the network describes a surface best? Nearest-of-K scoring on the activations after the
pool (receptive field 8 px), after each residual block (12, 16, 20 px at stride 2, before the 1×1 head) and
the head's output (the product's features), alone and concatenated. Earlier maps are larger (valid
convolutions): they are centre-cropped to the final map, so every level describes the same positions.

    .venv/bin/python benchmarks/experiments/levels.py --features trainer/backbones/default_h16.pt --data ksdd
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import common as C
from multiproto import evaluate
from score_grid import sizes_for
from train_probe import synth_set

from trainer.model import FeatureNet


def load_net(spec: str, h: int) -> FeatureNet:
    if spec == "random":
        torch.manual_seed(0)
        return FeatureNet(h).eval()
    ckpt = torch.load(spec, map_location="cpu", weights_only=False)
    net = FeatureNet(int(ckpt["h"]))
    net.load_state_dict(ckpt["state_dict"])
    return net.eval()


def level_features(net: FeatureNet, levels: list[str]) -> C.FeatureFn:
    """levels from: pool, b1, b2, b3, head (ELU applied to the linear block outputs but the head's)."""

    def run(x: np.ndarray) -> np.ndarray:
        outs = []
        with torch.no_grad():
            for i in range(0, len(x), 4):
                t = torch.from_numpy(x[i : i + 4]).unsqueeze(1)
                maps = {}
                y = net.pool(F.elu(net.stem(t)))
                maps["pool"] = y
                for j, block in enumerate(net.blocks):
                    y = block(y)
                    maps[f"b{j + 1}"] = y
                maps["head"] = net.head(y)
                hh, ww = maps["head"].shape[2:]
                parts = []
                for name in levels:
                    m = maps[name]
                    dy, dx = (m.shape[2] - hh) // 2, (m.shape[3] - ww) // 2
                    parts.append(m[:, :, dy : dy + hh, dx : dx + ww])
                outs.append(torch.cat(parts, dim=1).numpy())
        return np.concatenate(outs)

    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", required=True)
    ap.add_argument("--h", type=int, default=16)
    ap.add_argument("--data", default="ksdd")
    ap.add_argument("--size", default="cap1024")
    ap.add_argument("--sets", default="pool;b1;b2;b3;head;b2+head;b1+b3+head")
    ap.add_argument("--k", type=int, default=64)
    args = ap.parse_args()
    C.set_threads(2)
    net = load_net(args.features, args.h)
    for spec in args.sets.split(";"):
        feat = level_features(net, spec.split("+"))
        if args.data == "ksdd":
            split = C.load_ksdd()
            size = sizes_for(args.size, split)[args.size]
            res = evaluate(feat, split, size, [args.k], pixel=True)
            print(f"RESULT ksdd {spec:>16} img/pix {res[f'K{args.k}-std']}", flush=True)
            continue
        vals = []
        for fam in sorted(p for p in synth_set().iterdir() if p.is_dir()):
            split = C.load_mvtec(fam)
            res = evaluate(feat, split, split.train[0].shape, [args.k], pixel=False)
            vals.append(res[f"K{args.k}-std"][0])
        print(f"RESULT synth {spec:>16} mean {np.mean(vals):.3f} worst {np.min(vals):.3f} "
              f"{[round(v, 3) for v in vals]}", flush=True)


if __name__ == "__main__":
    main()
