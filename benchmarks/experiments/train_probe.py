"""One pretraining experiment: train a FeatureNet on a data mix with a negative mix, then measure it.

    .venv/bin/python benchmarks/experiments/train_probe.py --name paper --data synth:allx4x6 \
        --p-noise 0.5 --p-local 0 --steps 1500
    .venv/bin/python benchmarks/experiments/train_probe.py --name local --data synth:allx4x6,ksdd:500 \
        --p-noise 0.1 --p-local 0.6 --steps 1500

Trains with the paper's objective (softmax([d1, d2]) against [0, 1], mean absolute error; Adam) on
triplets from ``trainer.triplets.TripletSampler`` (a fresh set every ``--round-steps`` steps), saves
``runs/exp/<name>.pt`` ({state_dict, h, provenance}) and appends its measurements to
``runs/exp/results.jsonl``: held-out triplet accuracy, KolektorSDD image/pixel AUROC per input size and
scoring config, synthetic AUROC (all families) and the DAGM-samples pixel sanity check.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import common as C
import data_mix
from negatives import ContrastSampler, DefectBank

from trainer.model import FeatureNet
from trainer.triplets import LOCAL_KINDS, TripletConfig, TripletSampler

OUT = C.REPO / "runs" / "exp"


def paper_loss(
    fa: torch.Tensor, fb: torch.Tensor, fc: torch.Tensor, margin: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's softmax([d1, d2]) vs [0, 1] mean absolute error, or (margin > 0) the margin loss."""
    d1 = torch.linalg.vector_norm((fa - fb).flatten(1), dim=1)
    d2 = torch.linalg.vector_norm((fa - fc).flatten(1), dim=1)
    acc = (d1 < d2).float().mean()
    if margin > 0:
        return torch.relu(d1 - d2 + margin).mean(), acc
    p = torch.softmax(torch.stack([d1, d2], 1), 1)
    target = torch.tensor([0.0, 1.0]).expand_as(p)
    return torch.mean(torch.abs(p - target)), acc


def self_pairs(sampler: TripletSampler, tr, share: float, rng: np.random.Generator) -> None:
    """Turn ``share`` of the triplets into self-pairs: positive = the anchor with nuisance jitter (sensor
    noise, ±5 % gain, ±0.03 offset), negative = a local defect on the anchor itself. The network then
    learns how a defect moves a patch's feature, without being made blind to the texture itself (which
    same-position pairs of different images demand)."""
    n = len(tr)
    rows = np.flatnonzero(rng.random(n) < share)
    a = tr.anchor[rows].astype(np.float32)
    gain = rng.uniform(0.95, 1.05, (len(rows), 1, 1)).astype(np.float32)
    off = rng.uniform(-0.03, 0.03, (len(rows), 1, 1)).astype(np.float32)
    noise = rng.normal(0, 0.02, a.shape).astype(np.float32)
    tr.positive[rows] = np.clip(a * gain + off + noise, -1, 1)
    kinds = rng.integers(0, 4, len(rows))
    c = a.copy()
    for k, fn in enumerate((sampler._curve, sampler._blob, sampler._blur, sampler._noise_patch)):
        sel = np.flatnonzero(kinds == k)
        if sel.size:
            c[sel] = fn(a[sel].copy(), rng)
    tr.negative[rows] = c


def train(args: argparse.Namespace) -> tuple[FeatureNet, dict[str, float]]:
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    classes = data_mix.build(args.data, args.seed)
    for c in classes:
        if c.name.startswith("ksdd"):
            c.weight = args.ksdd_weight
        if c.name.startswith("photo"):
            c.weight = args.photo_weight
    cfg = TripletConfig(
        scales=tuple(int(s) for s in args.scales.split(",")),
        p_noise=args.p_noise,
        p_local=args.p_local,
        local_kinds=tuple(args.local_kinds.split(",")),
    )
    if args.curve:  # ContrastSampler curve shape: width_lo,width_hi,wiggle_hi,wiggle_freq_lo,wiggle_freq_hi
        w0, w1, a1, f0, f1 = (float(v) for v in args.curve.split(","))
        ContrastSampler.curve_width, ContrastSampler.curve_wiggle = (w0, w1), (0.0, a1)
        ContrastSampler.curve_wiggle_freq = (f0, f1)
    sampler = (ContrastSampler if args.sampler == 'contrast' else TripletSampler)(classes, cfg)
    print(sampler.sample(20000, np.random.default_rng(1)).kind_counts(), flush=True)
    val = sampler.sample(4096, np.random.default_rng(args.seed + 999))
    bank = None
    if args.p_defect > 0:
        t_bank = time.time()
        bank = DefectBank([c for c in classes if not c.name.startswith("photo")], cfg.scales[:2],
                          args.defect_versions, np.random.default_rng(args.seed + 7))
        print(f"defect bank: {len(bank.entries)} defective images in {time.time() - t_bank:.0f}s", flush=True)
    net = FeatureNet(args.h)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    t0 = time.time()
    log = []
    step = 0
    while step < args.steps:
        tr = sampler.sample(args.round_steps * args.batch, rng)
        if args.self_pairs > 0:
            self_pairs(sampler, tr, args.self_pairs, rng)
        if bank is not None:  # replace a share of the triplets by generator-defect triplets
            n_def = int(args.p_defect * len(tr))
            da, db, dc = bank.sample(n_def, rng)
            rows = rng.choice(len(tr), size=n_def, replace=False)
            tr.anchor[rows], tr.positive[rows], tr.negative[rows] = da, db, dc
        for k in range(args.round_steps):
            if step >= args.steps:
                break
            sl = slice(k * args.batch, (k + 1) * args.batch)
            a = torch.from_numpy(tr.anchor[sl].astype(np.float32)).unsqueeze(1)
            b = torch.from_numpy(tr.positive[sl].astype(np.float32)).unsqueeze(1)
            c = torch.from_numpy(tr.negative[sl].astype(np.float32)).unsqueeze(1)
            f = net(torch.cat([a, b, c]))
            fa, fb, fc = f.chunk(3)
            loss, acc = paper_loss(fa, fb, fc, args.margin)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            log.append((loss.item(), acc.item()))
            if args.save_every and step % args.save_every == 0:
                torch.save({"state_dict": net.state_dict(), "h": args.h, "provenance": {"step": step}},
                           OUT / f"{args.name}@{step}.pt")
            if step % 100 == 0:
                ls, ac = np.mean(log[-100:], axis=0)
                print(f"step {step} loss {ls:.4f} acc {ac:.3f} {time.time() - t0:.0f}s", flush=True)
    train_s = time.time() - t0
    net.eval()
    with torch.no_grad():
        accs = []
        for i in range(0, len(val), 512):
            sl = slice(i, i + 512)
            f = net(torch.from_numpy(np.concatenate([val.anchor[sl], val.positive[sl], val.negative[sl]]).astype(np.float32)).unsqueeze(1))
            fa, fb, fc = f.chunk(3)
            accs.append(paper_loss(fa, fb, fc)[1].item())
    return net, {"train_s": train_s, "final_loss": float(np.mean([x[0] for x in log[-100:]])), "val_acc": float(np.mean(accs))}


def measure(net: FeatureNet, sizes: str, cfg_idx: str, synth: bool, dagm: bool) -> dict[str, object]:
    from score_grid import SCORE_CONFIGS, sizes_for

    feat = C.net_features(net)
    cfgs = [SCORE_CONFIGS[int(i)] for i in cfg_idx.split(",")]
    res: dict[str, object] = {}
    ksdd = C.load_ksdd()
    for sname, size in sizes_for(sizes, ksdd).items():
        for label, r in C.evaluate_split(feat, ksdd, size, cfgs).items():
            res[f"ksdd/{sname}/{label}"] = (round(r.image_auroc, 4), round(r.pixel_auroc, 4))
            print(f"ksdd {sname:>9} {label:>20} img {r.image_auroc:.3f} pix {r.pixel_auroc:.3f}", flush=True)
    if synth:
        for label, (img, pix) in synthetic_auroc(feat, cfgs).items():
            res[f"synth/{label}"] = (round(img, 4), round(pix, 4))
            print(f"synth {label:>20} img {img:.3f} pix {pix:.3f}", flush=True)
    if dagm:
        for cfg in (C.ScoreConfig("global", "l2", False, 1), C.ScoreConfig("global", "l2", True, 4)):
            d = C.dagm_pixel_sanity(feat, cfg)
            res[f"dagm/{cfg.label()}"] = round(float(np.nanmean(list(d.values()))), 4)
            print(f"dagm {cfg.label()} pix mean {np.nanmean(list(d.values())):.3f}", flush=True)
    return res


def synthetic_auroc(feat: C.FeatureFn, cfgs: list[C.ScoreConfig]) -> dict[str, tuple[float, float]]:
    """Mean over the `trainer synth` products (all families, seed 0, 256 px) of image / pixel AUROC."""
    root = synth_set()
    per: dict[str, list[tuple[float, float]]] = {c.label(): [] for c in cfgs}
    for fam in sorted(p for p in root.iterdir() if p.is_dir()):
        split = C.load_mvtec(fam)
        size = split.train[0].shape
        for label, r in C.evaluate_split(feat, split, size, cfgs).items():
            per[label].append((r.image_auroc, r.pixel_auroc))
    return {k: tuple(np.mean(v, axis=0)) for k, v in per.items()}  # type: ignore[misc]


def synth_set(seed: int = 0, test_good: int = 20, test_defect: int = 5) -> Path:
    """The `trainer synth --seed` products (40 training images each); a larger test set holds the default one's
    parts (they are drawn per index) and more."""
    name = "synth-eval" if seed == 0 else f"synth-eval-s{seed}"
    if (test_good, test_defect) != (20, 5):
        name += f"-t{test_good}x{test_defect}"
    root = C.CACHE / name
    if not (root / "stripes" / "synth.json").exists():
        import subprocess

        subprocess.run(
            [sys.executable, "-m", "trainer", "synth", "--out", str(root), "--seed", str(seed), "--n-train", "40",
             "--n-test-good", str(test_good), "--n-test-defect", str(test_defect), "--size", "256"],
            check=True, cwd=C.REPO,
        )
    return root


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--data", default="synth:allx4x6")
    ap.add_argument("--ksdd-weight", type=float, default=1.0)
    ap.add_argument("--photo-weight", type=float, default=1.0)
    ap.add_argument("--scales", default="512,256,128,64")
    ap.add_argument("--p-noise", type=float, default=0.5)
    ap.add_argument("--p-local", type=float, default=0.0)
    ap.add_argument("--local-kinds", default=",".join(LOCAL_KINDS))
    ap.add_argument("--self-pairs", type=float, default=0.0,
                    help="share of triplets made self-pairs (positive = jittered anchor, negative = defect on it)")
    ap.add_argument("--p-defect", type=float, default=0.0,
                    help="share of triplets whose negative is a linewatch.surfaces defect (DefectBank)")
    ap.add_argument("--defect-versions", type=int, default=40, help="defective images per class and scale")
    ap.add_argument("--sampler", choices=("trainer", "contrast"), default="trainer",
                    help="trainer: trainer.triplets as is; contrast: negatives.ContrastSampler")
    ap.add_argument("--curve", help="ContrastSampler curve shape 'w_lo,w_hi,wiggle_hi,f_lo,f_hi' "
                    "(default 0.6,3,1,0.05,0.35; runs A1/A2/ksdd_hard_curve used 0.5,2.5,1.5,0.2,0.7)")
    ap.add_argument("--h", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--margin", type=float, default=0.0, help="> 0: margin triplet loss instead of the paper's")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--round-steps", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-every", type=int, default=0, help="also save a checkpoint every N steps")
    ap.add_argument("--sizes", default="squash512,half,native")
    ap.add_argument("--configs", default="0,1,4,7,9")
    ap.add_argument("--no-synth", action="store_true")
    ap.add_argument("--dagm", action="store_true")
    args = ap.parse_args()
    C.set_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    net, tstats = train(args)
    print(tstats, flush=True)
    torch.save({"state_dict": net.state_dict(), "h": args.h, "provenance": {"experiment": vars(args)}}, OUT / f"{args.name}.pt")
    t0 = time.time()
    res = measure(net, args.sizes, args.configs, not args.no_synth, args.dagm)
    with open(OUT / "results.jsonl", "a") as fh:
        fh.write(json.dumps({"name": args.name, "args": vars(args), **tstats, "eval_s": time.time() - t0, "results": res}) + "\n")


if __name__ == "__main__":
    main()
