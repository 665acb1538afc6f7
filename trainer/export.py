"""Export backbone + scoring head to ONNX (the graph the daemon runs): inputs ``image``, ``prototype_mean``,
``prototype_scale``; outputs ``heatmap``, ``score``; batch dimension dynamic."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch

from linewatch.bundle.manifest import ScoringSpec
from linewatch.inference.backend import (
    HEATMAP_OUTPUT,
    IMAGE_INPUT,
    MEAN_INPUT,
    SCALE_INPUT,
    SCORE_OUTPUT,
)
from trainer.model import (
    Backbone,
    FeatureNet,
    InspectionModel,
    MemberScoresModel,
    PathScoresModel,
    ScoringHead,
    feature_map_size,
)

OPSET = 17
INPUT_NAMES = [IMAGE_INPUT, MEAN_INPUT, SCALE_INPUT]
OUTPUT_NAMES = [HEATMAP_OUTPUT, SCORE_OUTPUT]
MEMBER_SCORES_OUTPUT = "member_scores"  # the trainer's level graph only (MemberScoresModel)
PATH_SCORES_OUTPUT = "path_scores"  # the trainer's graph for weighing alone members (PathScoresModel)


def export_onnx(
    backbone: FeatureNet | Backbone,
    height: int,
    width: int,
    distance: str,
    pooling: int,
    out: Path | None = None,
    *,
    clusters: int | None = None,
    smoothing: float = 0.0,
    member_scores: bool = False,
    path_scores: bool = False,
    alone_exponents: tuple[float, ...] = (),
) -> bytes:
    """Serialise the inspection graph for a fixed input size; returns the bytes (and writes ``out``).
    ``clusters=K`` exports the nearest-of-K-centres head (prototype mean K×h×1×1, scale 1×h×1×1) instead of
    the global/spatial one (1×h×H'×W' each); ``smoothing`` σ > 0 Gaussian-smooths the heatmap (in cells).
    A backbone of several members (stacked networks, the line bank) gets a head that scores each member on
    its own channels (h is then all members' channels) and averages the maps, except the members that reject
    alone (``Backbone.alone_members``), whose maps join by maximum. ``member_scores`` / ``path_scores``: the
    trainer's graphs with output N×M ``member_scores`` / N×P ``path_scores`` instead (never in a bundle).
    ``alone_exponents``: the alone paths' powers (``ScoringSpec.alone_exponents``).

    The legacy TorchScript exporter is used on purpose: it gives a plain, stable graph of Conv/Elu/MaxPool
    /Slice/Add/Sub/Div/ReduceSum/Sqrt/AveragePool/ReduceMax (and MatMul/ReduceMin for clusters) that ONNX
    Runtime and TensorRT both take.
    """
    backbone = Backbone.of(backbone)
    if backbone.unfitted:
        raise ValueError(f"the backbone's {' and '.join(backbone.unfitted)} member is not fitted: trainer "
                         "fit fits it on the product's good images before anything is exported")
    if member_scores and path_scores:
        raise ValueError("one trainer graph at a time: member_scores or path_scores")
    head = ScoringHead(distance=distance, pooling=pooling, clusters=clusters is not None, smoothing=smoothing,
                       member_dims=backbone.member_dims, alone=backbone.alone_members,
                       smoothed_alone=backbone.smoothed_alone_members, alone_exponents=alone_exponents)
    # Networks alone export exactly as before the Backbone wrapper existed (same weight names, same bytes):
    # bundles refitted on the same weights keep sharing one compiled model.
    kind = MemberScoresModel if member_scores else PathScoresModel if path_scores else InspectionModel
    model = kind(backbone.nets if backbone.networks_only else backbone, head).eval()
    outputs = ([MEMBER_SCORES_OUTPUT] if member_scores else [PATH_SCORES_OUTPUT] if path_scores
               else OUTPUT_NAMES)
    hh, hw = feature_map_size(height), feature_map_size(width)
    dim = backbone.feature_dim
    if clusters is not None:
        if clusters < 1:
            raise ValueError(f"clusters must be >= 1, got {clusters}")
        mean_shape, scale_shape = (clusters, dim, 1, 1), (1, dim, 1, 1)
    else:
        mean_shape = scale_shape = (1, dim, hh, hw)
    example = (
        torch.zeros(1, 1, height, width),
        torch.zeros(mean_shape),
        torch.ones(scale_shape),
    )
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's own deprecation notices
        torch.onnx.export(
            model,
            example,
            buffer,
            input_names=INPUT_NAMES,
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in (IMAGE_INPUT, *outputs)},
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
    data = buffer.getvalue()
    if out is not None:
        out.write_bytes(data)
    return data


def export_for_scoring(
    backbone: FeatureNet | Backbone, scoring: ScoringSpec, height: int, width: int, out: Path | None = None,
    *, member_scores: bool = False, path_scores: bool = False,
) -> bytes:
    """The graph a bundle's ``scoring`` section describes (its head, pooling and smoothing): the one mapping
    from manifest to ``export_onnx`` arguments, used by ``fit``, DAGM evaluation and bundles written
    without a fit. ``member_scores`` / ``path_scores``: the fit's level graph / the graph it weighs the alone
    members with instead."""
    backbone = Backbone.of(backbone)
    if scoring.member_dims != backbone.member_dims:
        raise ValueError(f"the scoring spec is for members of {'+'.join(map(str, scoring.member_dims))} "
                         f"features, the backbone's have {'+'.join(map(str, backbone.member_dims))}")
    if scoring.line_bank != backbone.line_bank:
        raise ValueError(f"the scoring spec's line bank ({scoring.line_bank}) is not the backbone's "
                         f"({backbone.line_bank})")
    if scoring.whitened != backbone.whitened_spec:
        raise ValueError(f"the scoring spec's whitened member ({scoring.whitened}) is not the backbone's "
                         f"({backbone.whitened_spec})")
    if scoring.extremes != backbone.extremes_spec:
        raise ValueError(f"the scoring spec's extremes member ({scoring.extremes}) is not the backbone's "
                         f"({backbone.extremes_spec})")
    if scoring.context != backbone.context_spec:
        raise ValueError(f"the scoring spec's context member ({scoring.context}) is not the backbone's "
                         f"({backbone.context_spec})")
    clusters = scoring.clusters if scoring.prototype_mode == "clusters" else None
    return export_onnx(backbone, height, width, scoring.distance, scoring.pooling, out,
                       clusters=clusters, smoothing=scoring.smoothing, member_scores=member_scores,
                       path_scores=path_scores, alone_exponents=scoring.alone_exponents)
