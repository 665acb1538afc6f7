"""Mixed-precision (fp16) version of a bundle's model.onnx, for TensorRT 10 and 11 alike.

TensorRT 11 removed the FP16 builder flag: precision comes from the types in the graph (strongly typed
networks). So the fp16 plan is built from an ONNX whose types already say fp16:

- the backbone (convolutions, ELU, pooling, residual adds: all the FLOPs) runs in fp16;
- the scoring head (prototype subtraction, division by the spread, squared/absolute sum over channels, sqrt,
  pooled maximum) stays fp32: a sum of h squared deviations can exceed fp16's 65504, and these ops are
  cheap next to the backbone;
- inputs and outputs stay float32 (keep_io_types), so the daemon feeds and reads the same buffers and the
  prototype tensors need no conversion.

The head is found structurally (every node downstream of the prototype inputs), not by op type.

Why not ``onnxconverter_common.float16.convert_float_to_float16(keep_io_types=True, node_block_list=head)``:
with this graph (1.16) it round-trips the values *between* two blocked nodes through fp16 (losing exactly
the precision the block list should keep) and leaves Cast/value_info types that ONNX Runtime rejects
("Type (tensor(float)) of output arg ... does not match expected type (tensor(float16))"). The conversion
needed here is small and explicit, so it is done directly: fp16 weights, one Cast on the image, one Cast
back to fp32 on the feature map.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from linewatch.inference.backend import IMAGE_INPUT, MEAN_INPUT, SCALE_INPUT

PROTOTYPE_INPUTS = (MEAN_INPUT, SCALE_INPUT)
FP16_MAX = float(np.finfo(np.float16).max)


def _name_nodes(model: onnx.ModelProto) -> None:
    # Head detection and error messages work on node names; the exporter leaves some empty.
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def _downstream(model: onnx.ModelProto, sources: tuple[str, ...]) -> list[onnx.NodeProto]:
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found: dict[str, onnx.NodeProto] = {}
    queue: deque[str] = deque(sources)
    while queue:
        tensor = queue.popleft()
        for node in consumers.get(tensor, []):
            if node.name not in found:
                found[node.name] = node
                queue.extend(node.output)
    return list(found.values())


def scoring_head_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that depend on a prototype input (the scoring head)."""
    _name_nodes(model)
    return sorted(node.name for node in _downstream(model, PROTOTYPE_INPUTS))


def _to_fp16(tensor: TensorProto) -> TensorProto:
    values = numpy_helper.to_array(tensor)
    return numpy_helper.from_array(np.clip(values, -FP16_MAX, FP16_MAX).astype(np.float16), tensor.name)


def convert_to_fp16(onnx_bytes: bytes) -> bytes:
    """fp32 model.onnx bytes → mixed-precision bytes (fp16 backbone, fp32 head, float32 inputs/outputs)."""
    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    head_names = set(scoring_head_nodes(model))
    if not head_names:
        raise ValueError("model has no nodes reading prototype_mean/prototype_scale: not a linewatch model")
    # backbone: everything computed from the image before the head; the rest are constants (axes, pads)
    image_side = {n.name for n in _downstream(model, (IMAGE_INPUT,))} - head_names
    backbone = [n for n in graph.node if n.name in image_side]
    constants = [n for n in graph.node if n.name not in image_side and n.name not in head_names]
    head = [n for n in graph.node if n.name in head_names]
    backbone_outputs = {o for n in backbone for o in n.output}
    if any(out.name in backbone_outputs for out in graph.output):
        raise ValueError("a graph output is produced by the backbone; expected heatmap/score from the head")
    head_inputs = {i for n in head for i in n.input}
    backbone_inputs = {i for n in backbone for i in n.input}

    def backbone_only(name: str) -> bool:
        if name in backbone_inputs and name in head_inputs:
            raise ValueError(f"float tensor {name!r} feeds both backbone and head; cannot split precisions")
        return name in backbone_inputs

    # Weights and float constants read by the backbone become fp16.
    initializers = []
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT and backbone_only(init.name):
            initializers.append(_to_fp16(init))
        else:
            initializers.append(init)
    for node in constants:
        if node.op_type != "Constant":
            continue
        for attr in node.attribute:
            # Only float constants change; an integer one (the split sizes that cut both the feature map and
            # the prototype into members) may feed both sides.
            if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT and any(
                backbone_only(o) for o in node.output
            ):
                attr.t.CopyFrom(_to_fp16(attr.t))

    image_fp16 = f"{IMAGE_INPUT}_fp16"
    for node in backbone:
        node.input[:] = [image_fp16 if i == IMAGE_INPUT else i for i in node.input]
    # Float tensors that cross from backbone to head (the feature map) go back to fp32; integer tensors
    # that cross (shapes the head reshapes by, computed from the feature map's Shape) stay as they are.
    inferred = onnx.shape_inference.infer_shapes(onnx.load_from_string(onnx_bytes))
    elem_types = {vi.name: vi.type.tensor_type.elem_type for vi in inferred.graph.value_info}
    casts_back = []
    for tensor in sorted(backbone_outputs & head_inputs):
        if elem_types.get(tensor, TensorProto.FLOAT) != TensorProto.FLOAT:
            continue
        fp32 = f"{tensor}_fp32"
        casts_back.append(helper.make_node("Cast", [tensor], [fp32], name=f"{tensor}_to_fp32",
                                           to=TensorProto.FLOAT))
        for node in head:
            node.input[:] = [fp32 if i == tensor else i for i in node.input]
    cast_in = helper.make_node(
        "Cast", [IMAGE_INPUT], [image_fp16], name="image_to_fp16", to=TensorProto.FLOAT16
    )

    del graph.node[:]
    graph.node.extend([*constants, cast_in, *backbone, *casts_back, *head])
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    del graph.value_info[:]  # stale fp32 annotations; shape inference writes the new ones
    converted = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(converted)
    return bytes(converted.SerializeToString())
