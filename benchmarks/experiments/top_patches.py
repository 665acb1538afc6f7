"""Crops around the maximum of the heatmap of the highest-scored good KolektorSDD images and of the
lowest-scored cracks (what wins the image score), 96×96 at native resolution, as one sheet.

    .venv/bin/python benchmarks/experiments/top_patches.py CKPT|random|raw CONFIG_INDEX OUT.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import common as C
from score_grid import SCORE_CONFIGS, load_features


def main() -> None:
    C.set_threads(2)
    feat = load_features(sys.argv[1], 16, 0)
    cfg = SCORE_CONFIGS[int(sys.argv[2])]
    ks = C.load_ksdd()
    size = C.native_size(ks.train)
    st = C.PrototypeStats()
    for ch in C.batched(ks.train, 8):
        st.add(C.extract(feat, ch, size))
    mean, scale = st.prototype(cfg)
    hms = np.concatenate([C.heatmaps(C.extract(feat, ch, size), mean, scale, cfg) for ch in C.batched(ks.test, 8)])
    sc = C.image_scores(hms, cfg.pooling)
    good = np.flatnonzero(ks.labels == 0)
    bad = np.flatnonzero(ks.labels == 1)
    picks = list(good[np.argsort(-sc[good])][:12]) + list(bad[np.argsort(sc[bad])][:12])
    crops = []
    for i in picks:
        img = ks.test[i]
        full = C.heatmap_to_image(hms[i], size, img.shape)
        y, x = np.unravel_index(np.argmax(full), full.shape)
        y0 = int(np.clip(y - 48, 0, img.shape[0] - 96))
        x0 = int(np.clip(x - 48, 0, img.shape[1] - 96))
        c = cv2.cvtColor(img[y0 : y0 + 96, x0 : x0 + 96], cv2.COLOR_GRAY2BGR)
        if ks.masks[i] is not None:
            cnt, _ = cv2.findContours(ks.masks[i][y0 : y0 + 96, x0 : x0 + 96].astype(np.uint8), cv2.RETR_EXTERNAL,
                                      cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(c, cnt, -1, (0, 255, 0), 1)
        cv2.putText(c, f"{sc[i]:.1f}", (2, 10), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 255), 1)
        crops.append(c)
    sheet = np.vstack([np.hstack(crops[:12]), np.hstack(crops[12:])])
    cv2.imwrite(sys.argv[3], cv2.resize(sheet, None, fx=1.4, fy=1.4, interpolation=cv2.INTER_NEAREST))


if __name__ == "__main__":
    main()
