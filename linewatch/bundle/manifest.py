"""``bundle.json``: the schema of a product bundle (DESIGN 3.3). The trainer writes it, the daemon reads it.

A bundle directory ``<products_dir>/<product_id>/`` holds:

- ``bundle.json``   this manifest
- ``model.onnx``    backbone + scoring head. Inputs ``image`` (N×1×H×W float32, preprocessed as below),
                    ``prototype_mean`` and ``prototype_scale`` (shapes below); outputs ``heatmap``
                    (N×H'×W' distances) and ``score`` (N). The prototype is a graph *input*, so products that
                    share a backbone and input size share one compiled model and switch by swapping tensors.
- ``prototype.npz`` arrays ``mean`` and ``scale`` (float32): 1×h×H'×W' each for a ``global`` (broadcast) or
                    ``spatial`` prototype; K×h×1×1 centres and a 1×h×1×1 scale for ``clusters``.
- ``engines/*.plan`` optional TensorRT plans, listed in ``engines`` with the key they were built for.

Every file's sha256 is listed in ``files``; the daemon refuses a bundle whose hashes, schema version or input
spec do not match, and says which and why.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

# 2 added Preprocessing.normalise and the Exposure range, 3 ScoringSpec.members, 4 ScoringSpec.line_bank, 5
# ScoringSpec.context, 6 ScoringSpec.whitened, 7 ScoringSpec.extremes, 8 WhitenedSpec.alone and
# ExtremesSpec.alone, 9 WhitenedSpec.discs, 10 ScoringSpec.alone_exponents, 11 ExtremesSpec.dark_path, 12
# ExtremesSpec.bright.
# An older bundle reads as it was fitted (normalise "none", no exposure check, one member, no line bank); a
# daemon that reads only older versions refuses a newer bundle by its version, not by a field name.
SCHEMA_VERSION = 12
READABLE_SCHEMA_VERSIONS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12)
MAX_MEMBERS = 16  # networks stacked in one backbone (ScoringSpec.members)
# The largest power (and 1 / the smallest) that puts an alone path on the averaged path's tail
# (ScoringSpec.alone_exponents): beyond it a path's few largest good scores would stretch over many decades.
MAX_ALONE_EXPONENT = 8.0
MAX_DARK_PATH = 2048  # input pixels (ExtremesSpec.dark_path): twice the fit's longest default side
# Input pixels per side of the dark path's blocks, each its darkest pixel (ExtremesSpec.dark_path)
DARK_PATH_BLOCK = 4
MANIFEST_NAME = "bundle.json"
MODEL_NAME = "model.onnx"
PROTOTYPE_NAME = "prototype.npz"

# A product id is a plain directory name: no separators, no "..", nothing a path could escape with.
ProductId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Model):
    """The tensor the model takes: N×1×height×width float32."""

    height: int = Field(gt=0, description="Model input height in pixels")
    width: int = Field(gt=0, description="Model input width in pixels")
    channels: Literal[1] = Field(1, description="Grayscale only")


class Preprocessing(_Model):
    """Exactly how a camera image becomes the model input (``linewatch.inference.preprocessing``)."""

    grayscale: Literal["bt601"] = Field("bt601", description="Colour to gray: ITU-R BT.601 luma (OpenCV)")
    resize: Literal["stretch"] = Field(
        "stretch", description="Resize the whole image to width×height (aspect ratio not kept)"
    )
    interpolation: Literal["area", "linear"] = Field(
        "area", description="OpenCV interpolation used for resizing"
    )
    value_range: tuple[float, float] = Field(
        (-1.0, 1.0),
        description="Pixel values are mapped from [0, dtype max] linearly onto this range (before normalise)",
    )
    normalise: Literal["none", "image_mean"] = Field(
        "none",
        description="'image_mean': the image's own mean is subtracted after scaling, so the overall lighting "
        "level of a part does not count, its texture and local marks do",
    )


class _MemberSpec(_Model):
    """A member beside the networks: by default one map of all its channels, averaged with the others."""

    alone_smoothed: ClassVar[bool] = True  # whether the head smooths its alone channel's map (if any)

    @property
    def channels(self) -> int:
        return 1

    @property
    def member_dims(self) -> tuple[int, ...]:
        """One member of all its channels (scored against its own prototype as one map)."""
        return (self.channels,)

    @property
    def alone_members(self) -> tuple[int, ...]:
        """Its members (indices into ``member_dims``) that reject alone: none, its map is averaged."""
        return ()


class LineBankSpec(_MemberSpec):
    """A fixed bank of oriented, elongated line filters computed beside the networks (trainer/linebank.py):
    per scale the strongest dark-line and bright-line response over the orientations, 2 channels per scale."""

    scales: tuple[tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(ge=1)]], ...] = Field(
        min_length=1, max_length=8,
        description="(σ across the line in input pixels, elongation σ along / σ across) per scale",
    )
    orientations: int = Field(ge=1, le=64, description="Filter angles over 180°")

    @property
    def channels(self) -> int:
        return 2 * len(self.scales)



class _DetectorSpec(_MemberSpec):
    """A member fitted per product whose one channel is a detector's response in units of the good parts' own
    noise (a standardised distance already): averaged with the other members, and with ``alone`` also a second
    channel that rejects alone (``ScoringSpec.alone_members``)."""

    alone: bool = Field(False, description="A second channel, a member that rejects alone: its map joins the "
                        "heatmap by maximum instead of counting a share of the average (the whitened "
                        "member: its map again, smoothed; the extremes member: its largest dark excursion, "
                        "unsmoothed)")

    @property
    def channels(self) -> int:
        return 2 if self.alone else 1

    @property
    def member_dims(self) -> tuple[int, ...]:
        """One member per channel: the averaged map, then (alone) the one that rejects alone."""
        return (1,) * self.channels

    @property
    def alone_members(self) -> tuple[int, ...]:
        """Its members (indices into ``member_dims``) that reject alone."""
        return (1,) if self.alone else ()


class WhitenedSpec(_DetectorSpec):
    """A member fitted per product (trainer/whitened.py): matched filters for spots (soft discs or Gaussian
    blobs) and short lines in the good images' own noise spectrum, as spatial kernels on the 2×2-pooled
    image; its channel is the largest |z| over the filters, a standardised distance already, so its
    prototype is fixed (centre 0, scale 1 before the fit's level). Its kernels are in ``model.onnx``; this is
    what rebuilds its shape."""

    blobs: tuple[Annotated[float, Field(gt=0, le=16)], ...] = Field(
        max_length=8, description="σ of the Gaussian blob templates in input pixels"
    )
    discs: tuple[tuple[Annotated[float, Field(gt=0, le=32)], Annotated[float, Field(gt=0, le=1)]], ...] = (
        Field((), max_length=32, description="(radius in input pixels, σ of the edge as a fraction of the "
              "radius) per soft-disc template: a stain or pit with a rim"))
    lines: tuple[tuple[Annotated[float, Field(gt=0, le=8)], Annotated[float, Field(ge=1, le=16)]], ...] = (
        Field(max_length=4, description="(σ across the line in input pixels, elongation σ along / σ across) "
              "per line template, each in every orientation"))
    orientations: int = Field(ge=1, le=32, description="Angles over 180° of each line template")
    kernel_size: int = Field(ge=3, le=65, description="Side of each spatial kernel on the 2×2-pooled image "
                             "(odd)")

    @model_validator(mode="after")
    def _some_templates(self) -> WhitenedSpec:
        if not self.blobs and not self.discs and not self.lines:
            raise ValueError("a whitened member needs at least one blob, disc or line template")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        return self

    @property
    def filters(self) -> int:
        """Spatial kernels: one per blob and per disc, one per line and orientation."""
        return len(self.blobs) + len(self.discs) + len(self.lines) * self.orientations



class ExtremesSpec(_DetectorSpec):
    """A member fitted per product (trainer/extremes.py): per cell the largest distance of a full-resolution
    pixel from the image's mean grey level, in units of the good images' spread, over a window×window pixel
    footprint. A standardised distance already, so its prototype is fixed (centre 0, scale 1 before the fit's
    level). Its spread is in ``model.onnx``; this is what rebuilds its shape."""

    window: int = Field(4, ge=2, le=16, description="Side of each cell's footprint in input pixels (even; "
                        "the cell's 2×2 pixels and half their neighbours' at 4)")
    dark_path: int = Field(0, ge=0, le=MAX_DARK_PATH, description="With ``alone``, a third channel that "
                           "rejects alone: how dark a path of about this many input pixels stays all along "
                           "(a long thin crack), on the image of each 4×4 block's darkest pixel; 0: none. A "
                           "multiple of 8")
    bright: bool = Field(False, description="With ``alone``, one more channel that rejects alone: the "
                         "largest bright excursion, for defects that catch the light (a scratch in a "
                         "coating). Off unless asked for: on metal, glints are how good parts vary")

    @model_validator(mode="after")
    def _even_window(self) -> ExtremesSpec:
        if self.window % 2:
            raise ValueError(f"window must be even (centred on a cell's 2x2 pixels), got {self.window}")
        if self.dark_path % (2 * DARK_PATH_BLOCK):
            raise ValueError(f"dark_path must be a multiple of {2 * DARK_PATH_BLOCK} input pixels, got "
                             f"{self.dark_path}")
        if self.dark_path and not self.alone:
            raise ValueError("dark_path needs alone: the dark path is a channel that rejects alone")
        if self.bright and not self.alone:
            raise ValueError("bright needs alone: the bright excursions are a channel that rejects alone")
        return self

    @property
    def channels(self) -> int:
        return super().channels + (1 if self.dark_path else 0) + (1 if self.bright else 0)

    @property
    def dark_path_steps(self) -> int:
        """h: the dark path spans 2h + 1 blocks of DARK_PATH_BLOCK px, about ``dark_path`` input pixels."""
        return self.dark_path // (2 * DARK_PATH_BLOCK)

    @property
    def alone_members(self) -> tuple[int, ...]:
        """The largest dark excursion (``alone``), the dark path (``dark_path``) and the largest bright
        excursion (``bright``) reject alone, in this order after the averaged channel."""
        return tuple(range(1, self.channels))

    # with ``alone``: the largest dark excursion, unsmoothed: smoothing would spread a 1-px crack's depth over
    # 3×3 cells
    alone_smoothed: ClassVar[bool] = False


class ContextSpec(_MemberSpec):
    """A member fitted per product (trainer/context.py): per radius a small network predicts a disc's
    brightness from a ring of samples around it; its channel is the largest |z| over the radii, a standardised
    distance already, so its prototype is fixed (centre 0, scale 1 before the fit's level). Its weights are
    in ``model.onnx``; this is what rebuilds its shape."""

    radii: tuple[Annotated[float, Field(gt=0, le=8)], ...] = Field(
        min_length=1, max_length=8, description="Disc radii (Gaussian σ) in input pixels, one network each"
    )
    angles: int = Field(ge=1, le=64, description="Ring samples per ring (two rings per radius)")
    hidden: int = Field(ge=1, le=1024, description="Width of each radius' two hidden layers")



class ScoringSpec(_Model):
    """How the feature map becomes a distance map (heatmap) and an image score."""

    feature_dim: int = Field(gt=0, description="h: channels of the feature map (all members together)")
    members: int = Field(
        1, ge=1, le=MAX_MEMBERS,
        description="Networks stacked in the backbone, each owning an equal share of the network channels; "
        "each member is compared with its own prototype and the heatmap is the mean of their maps"
    )
    line_bank: LineBankSpec | None = Field(
        None, description="A fixed line-filter member after the networks' channels (its channels last), "
        "scored like the networks and averaged with them"
    )
    whitened: WhitenedSpec | None = Field(
        None, description="The whitened member, fitted per product, after the line bank (one channel); its "
        "prototype is fixed, its map averaged with the others"
    )
    extremes: ExtremesSpec | None = Field(
        None, description="The grey-level extremes member, fitted per product, after the whitened member "
        "(one channel); its prototype is fixed, its map averaged with the others"
    )
    context: ContextSpec | None = Field(
        None, description="The context member, fitted per product, after the line bank, the whitened and the "
        "extremes member (its one channel last); its prototype is fixed, its map averaged with the others"
    )
    heatmap_height: int = Field(gt=0, description="H' of the distance map")
    heatmap_width: int = Field(gt=0, description="W' of the distance map")
    stride: int = Field(2, gt=0, description="Input pixels per heatmap cell")
    receptive_field: int = Field(32, gt=0, description="Input pixels seen by one feature (32×32)")
    prototype_mode: Literal["global", "spatial", "clusters"] = Field(
        description="global: one mean vector (paper); spatial: mean and spread per feature position; "
        "clusters: distance to the nearest of K k-means centres of good features"
    )
    clusters: int = Field(1, ge=1, le=4096, description="K: centres of a clusters prototype (1 otherwise)")
    distance: Literal["l2", "l1"] = Field(description="Euclidean (paper) or Manhattan distance")
    standardised: bool = Field(description="Divide feature deviations by the prototype's spread")
    smoothing: float = Field(
        0.0, ge=0.0, le=16.0, description="σ of the Gaussian smoothing of the distance map in cells (0: none)"
    )
    pooling: int = Field(1, ge=1, description="k: score = max of the k×k mean-pooled heatmap (1 = pixel max)")
    alone_exponents: tuple[Annotated[float, Field(ge=1.0 / MAX_ALONE_EXPONENT, le=MAX_ALONE_EXPONENT,
                                                  allow_inf_nan=False)], ...] = Field(
        (), max_length=MAX_MEMBERS,
        description="Per alone member (in alone_members order) the power its weighed map and score are "
        "raised to before the maximum, which puts its fitted tail on the averaged map's (calibration "
        "'frechet_joined'); empty: every power 1 (paths joined by their medians)"
    )

    @property
    def prototype_label(self) -> str:
        """'global', 'spatial' or 'clusters (K=64)': the prototype as reports and CLIs name it."""
        return f"clusters (K={self.clusters})" if self.prototype_mode == "clusters" else self.prototype_mode

    @property
    def beside_networks(self) -> tuple[LineBankSpec | WhitenedSpec | ExtremesSpec | ContextSpec, ...]:
        """The members beside the networks in channel order: line bank, whitened, extremes, context member."""
        return tuple(m for m in (self.line_bank, self.whitened, self.extremes, self.context) if m is not None)

    @property
    def network_dim(self) -> int:
        """Channels computed by the networks (all but those of the members beside them)."""
        return self.feature_dim - sum(m.channels for m in self.beside_networks)

    @property
    def member_dims(self) -> tuple[int, ...]:
        """Channels of each member, in channel order: the networks', then the line bank's, the whitened,
        extremes and context member's."""
        nets = (self.network_dim // self.members,) * self.members
        return nets + tuple(d for m in self.beside_networks for d in m.member_dims)

    @property
    def alone_members(self) -> tuple[int, ...]:
        """Indices (into ``member_dims``) of the members that reject alone: their maps join the heatmap by
        maximum, and the score is the largest of the averaged map's and theirs."""
        return alone_members(self.members, self.beside_networks)

    @property
    def smoothed_alone_members(self) -> tuple[int, ...]:
        """The alone members whose maps are smoothed like the averaged one (the whitened member's)."""
        return alone_members(self.members, self.beside_networks, smoothed=True)

    @property
    def features_label(self) -> str:
        """'16 features', '32 features, 2 members of 16 (maps averaged)' or '36 features, 2 members of 16 and
        4 line-filter channels (maps averaged)'."""
        if self.members == 1 and not self.beside_networks:
            return f"{self.feature_dim} features"
        nets = f"{self.members} member{'s' if self.members > 1 else ''} of {self.network_dim // self.members}"
        extra = ([f"{self.line_bank.channels} line-filter channels"] if self.line_bank else []) + (
            [f"a whitened member ({self.whitened.filters} filters"
             + (", also rejecting alone)" if self.whitened.alone else ")")] if self.whitened else []) + (
            ["a grey-level extremes member" + (" (its dark excursions rejecting alone)" if self.extremes.alone
                                                else "")
             + (f" and a dark path of {self.extremes.dark_path} px rejecting alone" if self.extremes.dark_path
                else "")
             + (" and its bright excursions rejecting alone" if self.extremes.bright else "")]
            if self.extremes else []) + (
            [f"a context member ({len(self.context.radii)} radii)"] if self.context else [])
        return f"{self.feature_dim} features, {nets}{''.join(' and ' + e for e in extra)} (maps averaged)"

    @model_validator(mode="after")
    def _clusters_consistent(self) -> ScoringSpec:
        if self.beside_networks and self.network_dim <= 0:
            raise ValueError(f"feature_dim {self.feature_dim} leaves no network channels beside the line "
                             "bank's and the per-product members'")
        if self.network_dim % self.members:
            raise ValueError(f"{self.network_dim} network feature channels do not split into {self.members} "
                             "members")
        if self.prototype_mode == "clusters" and self.distance != "l2":
            raise ValueError("a clusters prototype needs distance 'l2' (nearest centre, Euclidean)")
        if self.prototype_mode != "clusters" and self.clusters != 1:
            raise ValueError(f"clusters={self.clusters} needs prototype_mode 'clusters', "
                             f"not {self.prototype_mode!r}")
        if self.alone_exponents and len(self.alone_exponents) != len(self.alone_members):
            raise ValueError(f"alone_exponents has {len(self.alone_exponents)} entries for "
                             f"{len(self.alone_members)} alone members")
        return self


def alone_members(networks: int, beside: Sequence[LineBankSpec | WhitenedSpec | ExtremesSpec | ContextSpec],
                  smoothed: bool = False) -> tuple[int, ...]:
    """Indices (into the members: ``networks`` networks, then the members ``beside`` them in channel order) of
    the members that reject alone; ``smoothed``: only those whose maps are smoothed like the averaged one."""
    out: list[int] = []
    start = networks
    for spec in beside:
        if spec.alone_smoothed or not smoothed:
            out += [start + i for i in spec.alone_members]
        start += len(spec.member_dims)
    return tuple(out)


Shape4 = tuple[int, int, int, int]


def prototype_shapes(scoring: ScoringSpec) -> tuple[Shape4, Shape4]:
    """(mean, scale) shapes of the prototype tensors: 1×h×H'×W' each (global, spatial); K×h×1×1 centres and
    a 1×h×1×1 scale (clusters)."""
    h = scoring.feature_dim
    if scoring.prototype_mode == "clusters":
        return (scoring.clusters, h, 1, 1), (1, h, 1, 1)
    full = (1, h, scoring.heatmap_height, scoring.heatmap_width)
    return full, full


class Exposure(_Model):
    """The brightness (image mean) and contrast (image standard deviation) the good parts had, in model-input
    units before ``normalise``, and how far a frame may stray from them. A frame outside (brightness beyond
    the margin, or contrast far below any good part's) cannot be judged against this prototype (lamp failure,
    blank, black or saturated frame, exposure drift, lost focus), so the daemon
    reports it ``not_inspected`` with the figures instead of a score: with the image mean removed, a blank
    frame would otherwise look like a calm good part."""

    level_min: float = Field(description="Lowest image mean of the good images")
    level_max: float = Field(description="Highest image mean of the good images")
    contrast_min: float = Field(ge=0.0, description="Lowest image standard deviation of the good images")
    contrast_max: float = Field(ge=0.0, description="Highest image standard deviation of the good images")
    level_margin: float = Field(ge=0.0, description="A frame's mean may lie this far outside the good range")
    contrast_factor: float = Field(
        ge=1.0, description="A frame's standard deviation may be this many times below the good range's"
    )
    n_images: int = Field(ge=1, description="Good images the ranges come from")

    @model_validator(mode="after")
    def _ordered(self) -> Exposure:
        if self.level_min > self.level_max or self.contrast_min > self.contrast_max:
            raise ValueError("exposure ranges need min <= max")
        return self

    def problem(self, level: float, contrast: float) -> str | None:
        """Why a frame of this mean and standard deviation cannot be judged, or None when it can."""
        low, high = self.level_min - self.level_margin, self.level_max + self.level_margin
        if not low <= level <= high:
            return f"image mean {level:.3f} outside the good parts' {low:.3f}..{high:.3f}"
        # Only too little contrast (a flat, blank or defocused frame): more than the good parts had is what a
        # large defect or noise does, and the score is there to judge that.
        c_low = self.contrast_min / self.contrast_factor
        if contrast < c_low:
            return f"image contrast {contrast:.3f} below the good parts' {c_low:.3f} (blank or flat frame)"
        return None


class Calibration(_Model):
    """How the threshold was chosen, with the numbers behind it (good images only)."""

    method: str = Field(
        description="e.g. 'frechet' or 'gumbel' (extreme-value fits of good maxima), 'frechet_joined' (a "
        "score that is the largest of several paths, each on its own fitted tail: "
        "ScoringSpec.alone_exponents), "
        "'frechet_paths' (one fit per path of such a score, the paths weighed to one median) or 'quantile'"
    )
    target_frr: float = Field(ge=0.0, le=1.0, description="Target false-reject rate on good parts")
    n_images: int = Field(
        ge=0, description="Good images scored for calibration, each by a prototype it was not part of"
    )
    threshold: float = Field(gt=0.0, allow_inf_nan=False,
                             description="The calibrated threshold (same as the manifest's threshold)")
    good_scores: dict[str, float] = Field(
        default_factory=dict, description="Summary of good-part scores: min, mean, std, p50, p95, p99, max"
    )
    parameters: dict[str, float] = Field(
        default_factory=dict, description="Fitted distribution parameters, e.g. location and scale"
    )


class Provenance(_Model):
    """Where the model came from, so a result can be traced to data and code."""

    backbone: str = Field(description="Backbone name or checkpoint path")
    backbone_sha256: str = Field(description="sha256 of the backbone weights")
    trainer_version: str = Field(description="linewatch/trainer version that wrote the bundle")
    good_images: str = Field(description="Directory of good images the prototype was fitted on")
    n_prototype_images: int = Field(ge=0, description="Good images used for the prototype")
    seed: int = Field(description="Random seed of the fit")
    created_at: str = Field(description="ISO-8601 UTC time of the fit")
    notes: dict[str, str] = Field(default_factory=dict, description="Free-form facts, e.g. fine-tuning")


class EnginePlan(_Model):
    """A TensorRT plan compiled from ``model.onnx`` for one GPU and TensorRT version."""

    file: str = Field(description="Path relative to the bundle, e.g. engines/<key>.plan")
    gpu_name: str = Field(description="GPU the plan was built on")
    compute_capability: str = Field(description="e.g. '9.0'")
    tensorrt_version: str = Field(description="TensorRT version that built it")
    precision: Literal["fp32", "fp16"] = Field(description="Build precision")
    max_batch: int = Field(1, ge=1, description="Largest batch of the optimisation profile")
    parity: dict[str, float] = Field(
        default_factory=dict, description="ONNX Runtime vs TensorRT: max abs score/heatmap differences"
    )


class BundleManifest(_Model):
    schema_version: int = Field(
        description="Manifest schema version; the daemon reads READABLE_SCHEMA_VERSIONS, the trainer writes "
        "SCHEMA_VERSION"
    )
    product_id: ProductId = Field(description="Product id; equals the bundle's directory name")
    bundle_id: str = Field(
        description="Unique id of this fit: <product_id>@<first 12 hex of sha256(model + prototype)>"
    )
    input: InputSpec
    preprocessing: Preprocessing
    scoring: ScoringSpec
    # A distance: NaN would fail every part (not_inspected), 0 or less would reject every part.
    threshold: float = Field(gt=0.0, allow_inf_nan=False, description="Score above which a part is rejected")
    calibration: Calibration
    exposure: Exposure | None = Field(
        None, description="Brightness and contrast range of the good parts (None: frames are not checked)"
    )
    provenance: Provenance
    backbone_id: str = Field(
        description="sha256 of model.onnx: bundles with equal backbone_id share one compiled model"
    )
    files: dict[str, Sha256] = Field(description="sha256 of every file of the bundle except bundle.json")
    engines: list[EnginePlan] = Field(default_factory=list, description="Compiled TensorRT plans")

    @model_validator(mode="after")
    def _bundle_id_names_the_product(self) -> BundleManifest:
        """A bundle copied to another product with only ``product_id`` edited keeps the first product's id:
        the daemon would take the two for one fit (and not switch), so the id must name its product."""
        product, _, digest = self.bundle_id.rpartition("@")
        if product != self.product_id or not re.fullmatch(r"[0-9a-f]{12}", digest):
            raise ValueError(f"bundle_id {self.bundle_id!r} is not {self.product_id!r}@<12 hex digits of the "
                             "model and prototype's sha256> (a bundle copied from another product? fit it "
                             "again under its own id)")
        return self

    @model_validator(mode="after")
    def _fields_of_its_version(self) -> BundleManifest:
        """A field a later schema added must be at its default in an older manifest: an older trainer could
        not have written anything else, and an older daemon would not know what to do with it."""
        for version, (section, name) in FIELDS_ADDED:
            if self.schema_version < version and _field(self, section, name) != _default(section, name):
                where = f"{section}.{name}" if section else name
                raise ValueError(f"{where} needs schema_version >= {version}, this manifest says "
                                 f"{self.schema_version}")
        return self

    def to_json(self) -> str:
        """The manifest as ``bundle.json`` text, without the fields its schema version does not have (so a
        rewritten older bundle, e.g. after an engine build, still reads in the daemons of its version)."""
        data = self.model_dump(mode="json")
        for version, (section, name) in FIELDS_ADDED:
            if self.schema_version < version:
                _drop(data, section, name)
        return json.dumps(data, indent=2, ensure_ascii=False)


# (schema version that added it, (section or "", field)): what an older manifest does not have.
FIELDS_ADDED: tuple[tuple[int, tuple[str, str]], ...] = (
    (2, ("preprocessing", "normalise")),
    (2, ("", "exposure")),
    (3, ("scoring", "members")),
    (4, ("scoring", "line_bank")),
    (5, ("scoring", "context")),
    (6, ("scoring", "whitened")),
    (7, ("scoring", "extremes")),
    (8, ("scoring", "whitened.alone")),  # a field of an optional sub-section: absent with the sub-section
    (8, ("scoring", "extremes.alone")),
    (9, ("scoring", "whitened.discs")),
    (10, ("scoring", "alone_exponents")),
    (11, ("scoring", "extremes.dark_path")),
    (12, ("scoring", "extremes.bright")),
)
_SECTIONS: dict[str, type[BaseModel]] = {"preprocessing": Preprocessing, "scoring": ScoringSpec,
                                         "scoring.whitened": WhitenedSpec, "scoring.extremes": ExtremesSpec}


def _field(manifest: BundleManifest, section: str, name: str) -> object:
    *parents, last = name.split(".")
    owner: object = getattr(manifest, section) if section else manifest
    for parent in parents:
        owner = getattr(owner, parent)
        if owner is None:  # the sub-section is absent, so is its field: it counts as at its default
            return _default(section, name)
    return getattr(owner, last)


def _default(section: str, name: str) -> object:
    *parents, last = name.split(".")
    owner = _SECTIONS[".".join([section, *parents])] if section else BundleManifest
    return owner.model_fields[last].default


def _drop(data: dict[str, object], section: str, name: str) -> None:
    """Remove ``section.name`` (dotted into sub-sections) from a manifest's JSON data where present."""
    owner: object = data[section] if section else data
    *parents, last = name.split(".")
    for parent in parents:
        owner = owner.get(parent) if isinstance(owner, dict) else None
    if isinstance(owner, dict):
        owner.pop(last, None)
