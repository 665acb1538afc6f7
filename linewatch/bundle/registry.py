"""Product bundles on disk: verify and load them (daemon), write them (trainer).

Nothing outside ``products_dir`` is opened because of a product id: ids are validated as plain names and
the resolved path must stay inside the directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from linewatch.bundle.manifest import (
    MANIFEST_NAME,
    MODEL_NAME,
    PROTOTYPE_NAME,
    READABLE_SCHEMA_VERSIONS,
    BundleManifest,
    prototype_shapes,
)
from linewatch.errors import (
    BundleInputMismatchError,
    BundleIntegrityError,
    BundleNotFoundError,
    BundleSchemaError,
)

_PRODUCT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def validate_product_id(product_id: str) -> str:
    """Return the id if it is a plain name (letters, digits, ``._-``, no leading dot), else raise."""
    if not isinstance(product_id, str) or not _PRODUCT_ID.match(product_id) or ".." in product_id:
        raise BundleNotFoundError(
            f"invalid product id {product_id!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, without '..'"
        )
    return product_id


def bundle_path(products_dir: Path, product_id: str) -> Path:
    """The bundle directory of ``product_id`` inside ``products_dir`` (never outside it)."""
    validate_product_id(product_id)
    root = products_dir.resolve()
    path = (root / product_id).resolve()
    if path.parent != root:
        raise BundleNotFoundError(f"product {product_id!r} resolves outside {root}")
    return path


@dataclass(frozen=True, slots=True)
class LoadedBundle:
    """A verified bundle: manifest plus the prototype tensors, ready for a backend."""

    path: Path
    manifest: BundleManifest
    prototype_mean: npt.NDArray[np.float32]
    prototype_scale: npt.NDArray[np.float32]

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_NAME

    @property
    def product_id(self) -> str:
        return self.manifest.product_id

    @property
    def bundle_id(self) -> str:
        return self.manifest.bundle_id


def _problem(err: ErrorDetails) -> str:
    """One validation error as "field: message"; a whole-manifest check has no field, and pydantic's
    "Value error, " prefix of a validator's own message says nothing."""
    msg = str(err["msg"]).removeprefix("Value error, ")
    location = ".".join(str(p) for p in err["loc"])
    return f"{location}: {msg}" if location else msg


def read_manifest(path: Path) -> BundleManifest:
    """Parse and validate ``bundle.json`` (schema only; no hashes)."""
    manifest_file = path / MANIFEST_NAME
    if not path.is_dir():
        raise BundleNotFoundError(f"{path}: no such bundle directory")
    try:
        raw = json.loads(manifest_file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise BundleSchemaError(f"{manifest_file}: missing") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleSchemaError(f"{manifest_file}: unreadable JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise BundleSchemaError(f"{manifest_file}: expected a JSON object")
    version = raw.get("schema_version")
    if version not in READABLE_SCHEMA_VERSIONS:
        readable = ", ".join(str(v) for v in READABLE_SCHEMA_VERSIONS)
        raise BundleSchemaError(
            f"{manifest_file}: schema_version {version!r} is not supported (this linewatch reads {readable})"
        )
    try:
        manifest = BundleManifest.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_problem(err) for err in exc.errors())
        raise BundleSchemaError(f"{manifest_file}: invalid manifest: {problems}") from exc
    if manifest.product_id != path.name:
        raise BundleSchemaError(
            f"{manifest_file}: product_id {manifest.product_id!r} differs from its directory {path.name!r}"
        )
    return manifest


def verify_files(path: Path, manifest: BundleManifest) -> None:
    """Every listed file exists inside the bundle and has its sha256; model and prototype are listed."""
    for required in (MODEL_NAME, PROTOTYPE_NAME):
        if required not in manifest.files:
            raise BundleSchemaError(f"{path / MANIFEST_NAME}: files does not list {required}")
    root = path.resolve()
    for rel, expected in manifest.files.items():
        file = (root / rel).resolve()
        if root not in file.parents:
            raise BundleSchemaError(f"{path / MANIFEST_NAME}: file {rel!r} lies outside the bundle")
        if not file.is_file():
            raise BundleIntegrityError(f"{file}: listed in bundle.json but missing")
        actual = sha256_file(file)
        if actual != expected:
            raise BundleIntegrityError(
                f"{file}: sha256 {actual[:12]}… does not match bundle.json ({expected[:12]}…); "
                "the bundle was modified or damaged"
            )
    if manifest.backbone_id != manifest.files[MODEL_NAME]:
        raise BundleSchemaError(f"{path / MANIFEST_NAME}: backbone_id is not the sha256 of {MODEL_NAME}")


def _load_prototype(path: Path, manifest: BundleManifest) -> tuple[npt.NDArray[np.float32], ...]:
    expected_mean, expected_scale = prototype_shapes(manifest.scoring)
    try:
        with np.load(path / PROTOTYPE_NAME, allow_pickle=False) as data:
            mean = np.ascontiguousarray(data["mean"], dtype=np.float32)
            scale = np.ascontiguousarray(data["scale"], dtype=np.float32)
    except (OSError, KeyError, ValueError) as exc:
        raise BundleSchemaError(f"{path / PROTOTYPE_NAME}: unreadable prototype ({exc})") from exc
    for name, arr, expected in (("mean", mean, expected_mean), ("scale", scale, expected_scale)):
        if arr.shape != expected:
            raise BundleInputMismatchError(
                f"{path / PROTOTYPE_NAME}: {name} has shape {arr.shape}, the manifest says {expected}"
            )
        if not np.all(np.isfinite(arr)):
            raise BundleSchemaError(f"{path / PROTOTYPE_NAME}: {name} contains NaN or infinity")
    if np.any(scale <= 0):
        raise BundleSchemaError(f"{path / PROTOTYPE_NAME}: scale must be positive everywhere")
    return mean, scale


def load_bundle(path: Path) -> LoadedBundle:
    """Read, verify (schema, hashes, prototype shapes) and load a bundle directory."""
    manifest = read_manifest(path)
    verify_files(path, manifest)
    mean, scale = _load_prototype(path, manifest)
    return LoadedBundle(path=path, manifest=manifest, prototype_mean=mean, prototype_scale=scale)


def load_product(products_dir: Path, product_id: str) -> LoadedBundle:
    return load_bundle(bundle_path(products_dir, product_id))


def list_products(products_dir: Path) -> list[str]:
    """Product ids (directory names holding a bundle.json) in ``products_dir``, sorted."""
    if not products_dir.is_dir():
        return []
    return sorted(
        p.name for p in products_dir.iterdir()
        if p.is_dir() and _PRODUCT_ID.match(p.name) and (p / MANIFEST_NAME).is_file()
    )


def write_manifest(path: Path, manifest: BundleManifest) -> None:
    """Atomically write ``bundle.json`` (temp file + rename, so a reader never sees half a manifest)."""
    path.mkdir(parents=True, exist_ok=True)
    text = manifest.to_json() + "\n"
    fd, tmp = tempfile.mkstemp(dir=path, prefix=".bundle.", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path / MANIFEST_NAME)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def hash_files(path: Path) -> dict[str, str]:
    """sha256 of every regular file under ``path`` except bundle.json and temp files, keyed by POSIX path."""
    out: dict[str, str] = {}
    for file in sorted(path.rglob("*")):
        if file.is_file() and file.name != MANIFEST_NAME and not file.name.startswith("."):
            out[file.relative_to(path).as_posix()] = sha256_file(file)
    return out
