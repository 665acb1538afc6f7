"""Print runs/exp/results.jsonl (written by train_probe.py) as Markdown rows for RESULTS.md.

    .venv/bin/python benchmarks/experiments/summarize.py [--names a,b] [--size native]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_probe import OUT


def describe(a: dict) -> str:
    neg = f"noise {a['p_noise']}/local {a['p_local']}"
    if a["p_local"]:
        neg += f" ({a['local_kinds']}, {a.get('sampler', 'trainer')})"
    loss = f"margin {a['margin']}" if a.get("margin") else "paper"
    return f"{a['data']}; {neg}; {loss} lr {a['lr']}; {a['steps']} st; h={a['h']}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--names")
    ap.add_argument("--size", default="native")
    args = ap.parse_args()
    names = set(args.names.split(",")) if args.names else None
    rows = [json.loads(line) for line in (OUT / "results.jsonl").read_text().splitlines() if line.strip()]
    for r in rows:
        if names and r["name"] not in names:
            continue
        res = r["results"]
        ks = {k.split("/", 2)[2]: v for k, v in res.items() if k.startswith(f"ksdd/{args.size}/")}
        best = max(ks.items(), key=lambda kv: kv[1][0]) if ks else ("-", ("-", "-"))
        paper = ks.get("global-l2-k1", ("-", "-"))
        synth = {k.split("/", 1)[1]: v for k, v in res.items() if k.startswith("synth/")}
        sbest = max(synth.items(), key=lambda kv: kv[1][0]) if synth else ("-", ("-", "-"))
        dagm = res.get("dagm/global-l2-std-k4", "-")
        print(
            f"| {r['name']} | {describe(r['args'])} | {r['train_s'] / 60:.0f} min | {r['val_acc']:.3f} | "
            f"{paper[0]} / {paper[1]} | {best[0]}: {best[1][0]} / {best[1][1]} | "
            f"{sbest[0]}: {sbest[1][0]} | {dagm} |"
        )


if __name__ == "__main__":
    main()
