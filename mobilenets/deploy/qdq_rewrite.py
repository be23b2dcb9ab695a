"""Rewrite an fp32 ONNX graph into ops ONNX Runtime's quantizer keeps in int8.

ONNX Runtime's static quantizer has no quantized HardSwish, HardSigmoid or ReduceMean: in a
MobileNetV3 every h-swish and every squeeze-excite gate then runs dequantize → float → quantize,
and V3-Large int8 ran at 1.06× its fp32 speed. The same functions in ops it does quantize:

  HardSigmoid(x) = Clip(alpha·x + beta, 0, 1)       (ONNX's own definition)
  HardSwish(x)   = x · HardSigmoid(x), alpha = 1/6, beta = 1/2
  ReduceMean(x, axes=[2, 3], keepdims=1) = GlobalAveragePool(x)

Where a HardSigmoid is the only consumer of a Conv (the squeeze-excite gate), alpha and beta fold
into that Conv's weights and bias, so the gate is a Clip the quantizer absorbs into the Conv's
output range. The rewritten graph computes the same function in float; `quantize_onnx` checks it
against the original on the calibration images before quantizing.
"""
from __future__ import annotations

import numpy as np

HSWISH_ALPHA, HSWISH_BETA = 1.0 / 6.0, 0.5


def _attr(node, name, default):
    import onnx
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _const(graph, name: str, value) -> str:
    import onnx
    graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
    return name


def _mean_axes(graph, node) -> list[int] | None:
    """The axes of a ReduceMean (attribute before opset 18, input from 18 on)."""
    import onnx
    if len(node.input) > 1:
        init = {t.name: t for t in graph.initializer}
        const = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
        if node.input[1] in init:
            return onnx.numpy_helper.to_array(init[node.input[1]]).tolist()
        if node.input[1] in const:
            return onnx.numpy_helper.to_array(_attr(const[node.input[1]], "value", None)).tolist()
        return None
    return _attr(node, "axes", None)


def quantizable_graph(proto) -> dict:
    """Rewrite `proto` (an onnx.ModelProto, changed in place) as described above. Returns the
    count of each rewrite."""
    import onnx
    from onnx import helper, numpy_helper
    graph = proto.graph
    init = {t.name: t for t in graph.initializer}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    producer = {o: n for n in graph.node for o in n.output}
    counts = {"HardSwish": 0, "HardSigmoid folded into Conv": 0, "HardSigmoid": 0, "ReduceMean": 0}
    nodes = []
    for k, n in enumerate(graph.node):
        tag = f"{n.output[0]}_q{k}"
        if n.op_type == "HardSwish":
            x, y = n.input[0], n.output[0]
            nodes += [helper.make_node("Mul", [x, _const(graph, f"{tag}_alpha", HSWISH_ALPHA)], [f"{tag}_s"]),
                      helper.make_node("Add", [f"{tag}_s", _const(graph, f"{tag}_beta", HSWISH_BETA)], [f"{tag}_t"]),
                      helper.make_node("Clip", [f"{tag}_t", _const(graph, f"{tag}_lo", 0.0),
                                                _const(graph, f"{tag}_hi", 1.0)], [f"{tag}_g"]),
                      helper.make_node("Mul", [x, f"{tag}_g"], [y])]
            counts["HardSwish"] += 1
        elif n.op_type == "HardSigmoid":
            alpha, beta = _attr(n, "alpha", 0.2), _attr(n, "beta", 0.5)
            conv = producer.get(n.input[0])
            lo, hi = _const(graph, f"{tag}_lo", 0.0), _const(graph, f"{tag}_hi", 1.0)
            if (conv is not None and conv.op_type == "Conv" and len(consumers[n.input[0]]) == 1
                    and conv.input[1] in init and (len(conv.input) < 3 or conv.input[2] in init)
                    and n.input[0] not in {o.name for o in graph.output}):
                w = numpy_helper.to_array(init[conv.input[1]]).astype(np.float64)
                b = (numpy_helper.to_array(init[conv.input[2]]).astype(np.float64) if len(conv.input) > 2
                     else np.zeros(w.shape[0]))
                # fresh names: another node may share the original initializers
                wn = _const(graph, f"{tag}_w", (w * alpha).astype(np.float32))
                bn = _const(graph, f"{tag}_b", (b * alpha + beta).astype(np.float32))
                del conv.input[1:]
                conv.input.extend([wn, bn])
                nodes.append(helper.make_node("Clip", [n.input[0], lo, hi], [n.output[0]]))
                counts["HardSigmoid folded into Conv"] += 1
            else:
                nodes += [helper.make_node("Mul", [n.input[0], _const(graph, f"{tag}_alpha", alpha)], [f"{tag}_s"]),
                          helper.make_node("Add", [f"{tag}_s", _const(graph, f"{tag}_beta", beta)], [f"{tag}_t"]),
                          helper.make_node("Clip", [f"{tag}_t", lo, hi], [n.output[0]])]
                counts["HardSigmoid"] += 1
        elif (n.op_type == "ReduceMean" and _attr(n, "keepdims", 1) == 1
              and sorted(a % 4 for a in (_mean_axes(graph, n) or [])) == [2, 3]):
            nodes.append(helper.make_node("GlobalAveragePool", [n.input[0]], [n.output[0]]))
            counts["ReduceMean"] += 1
        else:
            nodes.append(n)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(proto)
    return counts


def float_islands(proto) -> dict:
    """Float ops between a DequantizeLinear and a QuantizeLinear in a QDQ graph, by op type:
    ops that take a dequantized activation (not a weight) and whose output is not requantized."""
    graph = proto.graph
    init = {t.name for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    out: dict[str, int] = {}
    for n in graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        fed = any(i in producer and producer[i].op_type == "DequantizeLinear"
                  and producer[i].input[0] not in init for i in n.input)
        requantized = all(c.op_type == "QuantizeLinear" for o in n.output for c in consumers.get(o, []))
        if fed and not (requantized and any(consumers.get(o) for o in n.output)):
            out[n.op_type] = out.get(n.op_type, 0) + 1
    return out
