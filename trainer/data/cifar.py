"""CIFAR-100 "python" pickles (DESIGN 3.1d), in grayscale.

The file is a pickled dict with ``b"data"`` (N×3072 uint8: 1024 red, 1024 green, 1024 blue values of a
32×32 image, row-major) and ``b"fine_labels"`` (CIFAR-10's ``b"labels"`` is taken too). Class names come
from the ``meta`` file beside it when present.

Pickles can run code when loaded; this reader only lets through the few numpy constructors an array
needs, so a tampered file fails with an error instead of executing anything.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from trainer.data.images import DatasetError

_SIDE = 32
# (module, name) a CIFAR pickle legitimately refers to; old numpy module paths are mapped to numpy 2's.
_ALLOWED = {
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("builtins", "bytearray"),
    ("_codecs", "encode"),
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("numpy.core."):
            module = "numpy._core." + module.removeprefix("numpy.core.")
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data pickle")
        return super().find_class(module, name)


def _load(path: Path) -> Any:
    try:
        with path.open("rb") as fh:
            return _ArrayOnlyUnpickler(fh, encoding="bytes").load()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as exc:
        raise DatasetError(f"{path}: not a CIFAR python pickle ({exc})") from exc


def _get(d: dict[Any, Any], *keys: str) -> Any:
    for key in keys:
        for k in (key.encode(), key):
            if k in d:
                return d[k]
    return None


def _label_names(path: Path, count: int) -> list[str]:
    meta_file = path.parent / "meta"
    names: Any = None
    if meta_file.is_file():
        meta = _load(meta_file)
        if isinstance(meta, dict):
            names = _get(meta, "fine_label_names", "label_names")
    if not names or len(names) < count:
        return [f"{i:03d}" for i in range(count)]
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def read_cifar(path: Path, max_per_class: int | None = None) -> dict[str, npt.NDArray[np.uint8]]:
    """Class name → K×32×32 uint8 grayscale images (ITU-R 601 luma, as cv2's RGB→GRAY)."""
    content = _load(path)
    if not isinstance(content, dict):
        raise DatasetError(f"{path}: expected a pickled dict, got {type(content).__name__}")
    data = _get(content, "data")
    labels = _get(content, "fine_labels", "labels")
    if data is None or labels is None:
        raise DatasetError(f"{path}: missing b'data' or b'fine_labels' (CIFAR-100 python format expected)")
    data = np.asarray(data)
    labels_arr = np.asarray(labels, dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * _SIDE * _SIDE or data.shape[0] != labels_arr.shape[0]:
        raise DatasetError(
            f"{path}: data must be N×3072 with N labels, got {data.shape} and {labels_arr.shape[0]} labels"
        )
    rgb = data.astype(np.float32).reshape(-1, 3, _SIDE, _SIDE)
    gray = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
    gray_u8 = np.clip(np.round(gray), 0, 255).astype(np.uint8)
    names = _label_names(path, int(labels_arr.max()) + 1 if labels_arr.size else 0)
    classes = {}
    for label in np.unique(labels_arr):
        images = gray_u8[labels_arr == label]
        classes[names[int(label)]] = images[:max_per_class] if max_per_class else images
    return classes
