"""Seeded random cases for the fuzz tests: odd sizes, exact ties, -inf runs, signed zeros, NaN
rows, fp16/bf16, non-contiguous views.

Case i of op `name` draws everything from one generator seeded by (name, i), so a failure's
test id (e.g. `test_fuzz_nearest_code[cpu-17]`) replays it exactly. The number of cases per op
and backend is VQFAST_FUZZ_EXAMPLES (default 6; the Triton interpreter runs a sixth of them,
at smaller sizes).
"""
from __future__ import annotations

import os
import zlib

import pytest
import torch

from tests.conftest import available

EXAMPLES = int(os.environ.get("VQFAST_FUZZ_EXAMPLES", "6"))
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
PATTERNS = ("plain", "ties", "signed_zeros", "large", "small")


def examples(backends=("cpu", "triton")):
    """pytest params (backend, i): EXAMPLES cases on cpu, a sixth of them (at least one) on Triton."""
    out = []
    for b in backends:
        n = EXAMPLES if b != "triton" else max(1, EXAMPLES // 6)
        mark = pytest.mark.skipif(not available(b), reason=f"{b} backend not available")
        out += [pytest.param(b, i, id=f"{b}-{i}", marks=mark) for i in range(n)]
    return out


class Case:
    """The random draws of one case."""

    def __init__(self, name: str, i: int, backend: str):
        self.g = torch.Generator().manual_seed(zlib.crc32(f"{name}-{i}".encode()))
        self.small = backend == "triton"  # the interpreter: ~ms per block op, one program per row

    def int(self, lo: int, hi: int, small_hi: int | None = None) -> int:
        """Uniform in [lo, hi] (or [lo, small_hi] on the interpreter)."""
        hi = min(hi, small_hi) if self.small and small_hi is not None else hi
        return int(torch.randint(lo, hi + 1, (1,), generator=self.g))

    def pick(self, options):
        return options[self.int(0, len(options) - 1)]

    def chance(self, p: float) -> bool:
        return bool(torch.rand(1, generator=self.g) < p)

    def floats(self, shape, dtype, pattern: str) -> torch.Tensor:
        """Values of one pattern, rounded to dtype."""
        x = torch.randn(shape, generator=self.g)
        if pattern == "ties":  # a few levels: exact ties everywhere
            x = torch.randint(-2, 3, shape, generator=self.g).float() * 0.5
        elif pattern == "signed_zeros":
            zero = torch.rand(shape, generator=self.g) < 0.4
            sign = torch.where(torch.rand(shape, generator=self.g) < 0.5, -1.0, 1.0)
            x = torch.where(zero, sign * 0.0, x)
        elif pattern == "large":
            x = x * 300.0
        elif pattern == "small":
            x = x * 1e-3
        return x.to(dtype)

    def neg_inf_runs(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Runs of -inf along the last dim, never covering a whole row (nor the ids in `keep` [...])."""
        V = x.shape[-1]
        if V < 2:
            return x
        x = x.clone()
        flat = x.reshape(-1, V)
        for r in range(flat.shape[0]):
            a = self.int(0, V - 1)
            b = self.int(a, min(V - 1, a + max(1, V // 2)))
            run = torch.zeros(V, dtype=torch.bool)
            run[a:b + 1] = True
            if bool(run.all()):
                run[self.int(0, V - 1)] = False
            if keep is not None:
                run[keep.reshape(-1)[r]] = False
            flat[r, run] = float("-inf")
        return x

    def nan_rows(self, x: torch.Tensor, p: float = 0.3) -> torch.Tensor:
        """A NaN or +inf in some rows (last dim) of x -> (x, bool [...] of the rows hit)."""
        x = x.clone()
        flat = x.reshape(-1, x.shape[-1])
        hit = torch.rand(flat.shape[0], generator=self.g) < p
        for r in hit.nonzero().flatten().tolist():
            flat[r, self.int(0, flat.shape[1] - 1)] = self.pick((float("nan"), float("inf")))
        return x, hit.reshape(x.shape[:-1])

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """x itself or, half the time, the same values as a non-contiguous view (last-dim stride 2)."""
        if x.dim() == 0 or x.shape[-1] < 1 or not self.chance(0.5):
            return x
        big = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype)
        big[..., ::2] = x
        return big[..., ::2]
