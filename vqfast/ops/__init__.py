"""Public functional ops: each validates its arguments, picks a backend and runs it."""
from vqfast.ops.ema import ema_statistics, ema_update_
from vqfast.ops.nearest_code import QuantizeOutput, nearest_code, quantize

__all__ = ["QuantizeOutput", "ema_statistics", "ema_update_", "nearest_code", "quantize"]
