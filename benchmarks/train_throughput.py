"""Training throughput on this machine: triplets/s for one optimiser step (forward + backward + Adam) of the
paper's objective at batch 256, for h = 16 and h = 32, and how fast the sampler makes triplets.

    .venv/bin/python benchmarks/train_throughput.py [--seconds S] [--threads N ...]

The triplets are real ones (synthetic surfaces through ``TripletSampler``); speed does not depend on the
weights. Each configuration warms up for a few steps, then runs for ``--seconds``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from linewatch.surfaces import FAMILIES, render_surface
from trainer.model import FeatureNet
from trainer.train import TrainConfig, loss_fn, triplet_distances
from trainer.triplets import ImageClass, TripletConfig, TripletSampler

BATCH = 256


def make_sampler() -> TripletSampler:
    classes = [
        ImageClass(
            family, [render_surface(family, 512, 512, np.random.default_rng([k, i]), k) for i in range(4)]
        )
        for k, family in enumerate(FAMILIES)
    ]
    return TripletSampler(classes, TripletConfig(p_noise=0.3, p_local=0.3))


def step_rate(h: int, threads: int, triplets: list[torch.Tensor], seconds: float) -> float:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = FeatureNet(h)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    config = TrainConfig(h=h)
    a, b, c = triplets

    def step() -> None:
        d1, d2 = triplet_distances(net, a, b, c)
        loss = loss_fn(config, d1, d2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        steps += 1
    return steps * BATCH / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="timed run per configuration")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[1, torch.get_num_threads()], help="torch threads"
    )
    args = parser.parse_args()

    sampler = make_sampler()
    start = time.perf_counter()
    triplets = sampler.sample(50_000, np.random.default_rng(0))
    sample_rate = len(triplets) / (time.perf_counter() - start)
    batch = [torch.from_numpy(x[:BATCH].astype(np.float32)).unsqueeze(1) for x in
             (triplets.anchor, triplets.positive, triplets.negative)]  # fmt: skip

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads available, batch {BATCH}")
    print(f"triplet sampling (numpy, one core; 30% noise, 30% local, 40% cross-class): {sample_rate:,.0f}/s")
    print()
    print(f"{'h':>3} {'threads':>7} {'triplets/s':>11} {'s per 6x15 epochs of 20k':>26}")
    for h in (16, 32):
        for threads in dict.fromkeys(args.threads):
            rate = step_rate(h, threads, batch, args.seconds)
            print(f"{h:>3} {threads:>7} {rate:>11,.0f} {6 * 15 * 20_000 / rate:>26,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
