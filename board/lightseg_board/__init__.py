"""The board side of lightseg-nas: what a target device runs to time the search's networks.

A board joins the search's Ray cluster with a resource `target:NAME`; the search sends it ONNX
graphs (bytes) and asks for `measure_on_node`. Only NumPy, ONNX Runtime and Ray are needed here.
"""
__version__ = "0.1.0"  # board/pyproject.toml's; facts() adds the source's hash

from .graph import ALLOWED_OPS, MAX_GRAPH_MB, GraphRefused, check_graph
from .measure import BoardMismatch, Measurement, Request, facts, facts_on_node, measure, measure_on_node

__all__ = ["ALLOWED_OPS", "BoardMismatch", "MAX_GRAPH_MB", "GraphRefused", "Measurement", "Request", "check_graph", "facts",
           "facts_on_node", "measure", "measure_on_node"]
