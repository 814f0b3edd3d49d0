"""What a board agrees to run: an ONNX graph of the search's own operators, of bounded size.

The graph is read with a few lines of protobuf's wire format rather than the `onnx` package, so
the board needs nothing beyond ONNX Runtime. A graph is refused when it is too large, uses an
operator outside `ALLOWED_OPS` or a domain other than the standard one (custom operators load
code), holds subgraphs, functions or sparse tensors, or points at external data (files on the board).
"""
from __future__ import annotations

# What the search's networks export to (every block family, decoder, downsampler and ratio, at
# opset 17), and the forms PyTorch's exporter gives the same operations in other versions.
EXPORTED_OPS = frozenset({
    "Add", "BatchNormalization", "Concat", "Constant", "Conv", "ConvTranspose", "DepthToSpace", "Div", "Exp",
    "Gather", "GlobalAveragePool", "Identity", "MaxPool", "Mul", "Pad", "Range", "ReduceSum", "Relu", "Reshape",
    "Resize", "Shape", "Slice", "Sub", "Transpose", "Unsqueeze",
})
EQUIVALENT_OPS = frozenset({
    "AveragePool", "Cast", "Clip", "ConstantOfShape", "Einsum", "Expand", "Flatten", "ReduceMean", "Sigmoid",
    "Softmax", "SpaceToDepth", "Split", "Squeeze",
})
ALLOWED_OPS = EXPORTED_OPS | EQUIVALENT_OPS
STANDARD_DOMAINS = ("", "ai.onnx")
MAX_GRAPH_MB = 512  # TVConv's per-pixel kernels at a large deployment size reach a few hundred MB


class GraphRefused(ValueError):
    """The graph is not one this board runs; the message says why, in one line."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise GraphRefused("not an ONNX graph (truncated)")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise GraphRefused("not an ONNX graph (bad varint)")


def fields(buf: bytes | memoryview) -> list[tuple[int, int, memoryview | int]]:
    """The (field number, wire type, value) of one protobuf message: a memoryview into `buf` for
    length-delimited fields (no copy: a graph of hundreds of MB is read on a small board), an int
    for the others."""
    buf = memoryview(buf)
    out, pos = [], 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1 or wire == 5:
            size = 8 if wire == 1 else 4
            value, pos = int.from_bytes(buf[pos:pos + size].tobytes(), "little"), pos + size
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        else:
            raise GraphRefused(f"not an ONNX graph (wire type {wire})")
        if pos > len(buf):
            raise GraphRefused("not an ONNX graph (truncated)")
        out.append((number, wire, value))
    return out


def _text(value) -> str:
    return bytes(value).decode("utf-8", errors="replace") if isinstance(value, (bytes, memoryview)) else ""


# ONNX's field numbers (onnx.proto3)
_MODEL_OPSET, _MODEL_GRAPH, _MODEL_TRAINING, _MODEL_FUNCTIONS = 8, 7, 20, 25
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE = 1, 5, 15
_NODE_OP, _NODE_DOMAIN, _NODE_ATTRIBUTE = 4, 7, 5
_ATTR_TENSOR, _ATTR_GRAPH, _ATTR_TENSORS, _ATTR_GRAPHS = 5, 6, 10, 11
_ATTR_SPARSE, _ATTR_SPARSES = 22, 23  # sparse_tensor, sparse_tensors (a Constant's sparse_value)
_TENSOR_EXTERNAL, _TENSOR_LOCATION = 13, 14


def _check_tensor(buf: bytes) -> None:
    for number, _, value in fields(buf):
        if number == _TENSOR_EXTERNAL or (number == _TENSOR_LOCATION and value == 1):
            raise GraphRefused("the graph points at external data (files on the board); send its weights inside it")


def check_graph(graph: bytes) -> list[str]:
    """The graph's operator types, in order; GraphRefused (one line) for anything this board does not run."""
    mb = len(graph) / 2**20
    if mb > MAX_GRAPH_MB:
        raise GraphRefused(f"graph of {mb:.0f} MB: larger than the {MAX_GRAPH_MB} MB a board accepts")
    model = fields(graph)
    graphs = [v for n, w, v in model if n == _MODEL_GRAPH and w == 2]
    if len(graphs) != 1:
        raise GraphRefused("not an ONNX model (no graph)")
    if any(n in (_MODEL_TRAINING, _MODEL_FUNCTIONS) for n, _, _ in model):
        raise GraphRefused("the model carries functions or training graphs; only a plain inference graph is run")
    for n, w, v in model:
        if n == _MODEL_OPSET and w == 2:
            domain = next((_text(x) for k, _, x in fields(v) if k == 1), "")
            if domain not in STANDARD_DOMAINS:
                raise GraphRefused(f"operator set domain {domain!r}: only the standard ONNX operators are run")
    ops = []
    for number, wire, value in fields(graphs[0]):
        if number == _GRAPH_SPARSE:
            raise GraphRefused("sparse initializers are not among the search's graphs")
        if number == _GRAPH_INITIALIZER and wire == 2:
            _check_tensor(value)
        if number != _GRAPH_NODE or wire != 2:
            continue
        node = fields(value)
        op = next((_text(v) for n, _, v in node if n == _NODE_OP), "")
        domain = next((_text(v) for n, _, v in node if n == _NODE_DOMAIN), "")
        if domain not in STANDARD_DOMAINS or op not in ALLOWED_OPS:
            raise GraphRefused(f"operator {domain + '.' if domain else ''}{op}: not one the search's networks "
                               "export to (lightseg_board.graph.ALLOWED_OPS)")
        for attribute in (v for n, w, v in node if n == _NODE_ATTRIBUTE and w == 2):
            for k, w, v in fields(attribute):
                if k in (_ATTR_GRAPH, _ATTR_GRAPHS):
                    raise GraphRefused(f"operator {op} carries a subgraph; only plain graphs are run")
                if k in (_ATTR_SPARSE, _ATTR_SPARSES):
                    raise GraphRefused(f"operator {op} carries a sparse tensor: not among the search's graphs")
                if k in (_ATTR_TENSOR, _ATTR_TENSORS) and w == 2:
                    _check_tensor(v)
        ops.append(op)
    return ops
