"""Public functional ops: each validates its arguments, picks a backend and runs it."""
from vqfast.ops.nearest_code import QuantizeOutput, nearest_code, quantize

__all__ = ["QuantizeOutput", "nearest_code", "quantize"]
