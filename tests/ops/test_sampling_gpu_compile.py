"""The sampling, noise and diffusion Triton kernels compile for a real GPU (sm_90) here.

The interpreter runs the kernels' Python, so errors only Triton's compiler sees (globals
that are not constexpr, loop-carried types of the categorical draw's trial loop, ...)
show only here. Runs in a subprocess without TRITON_INTERPRET (conftest sets it).
"""
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

SCRIPT = textwrap.dedent('''
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from vqfast.triton_kernels import sampling as S, diffusion as D

def comp(fn, types, constexprs, warps=4):
    sig = {p.name: ("constexpr" if p.is_constexpr else types.get(p.name, "i32")) for p in fn.params}
    triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constexprs), target=GPUTarget("cuda", 90, 32),
                   options={"num_warps": warps, "enable_fp_fusion": False})

f32, i64 = "fp32", "i64"
samp = dict(X="*fp32", U="*fp32", ROWS="*i64", OUT="*i64", scale=f32, temperature=f32, TOP_P="*fp64")
for flags in [(False, False, True, False, False), (False, True, False, False, False), (True, True, False, True, True)]:
    cfg, t, greedy, k, p = flags
    comp(S._sample_rows_kernel, samp, dict(HAS_CFG=cfg, APPLY_T=t, GREEDY=greedy, USE_K=k, USE_P=p, BLOCK=2048))
lse = dict(X="*bf16", SKIP="*i8", BAN="*i8", TOK="*i64", M="*fp32", NORM="*fp32", temperature=f32)
for sample in (False, True):
    comp(S._row_lse_kernel, lse, dict(SAMPLE=sample, APPLY_T=True, HAS_BAN=True, BLOCK=2048))
dif = dict(X="*fp16", ZT="*i64", C="*fp32", OUT="*i64")
for kind in (0, 1):
    comp(D._sample_kernel, dif, dict(KIND=kind, BLOCK=4096))
from vqfast.triton_kernels import random as R
for kind in (0, 1):
    comp(D._logprobs_kernel, dict(X="*fp32", ZT="*i64", C="*fp32", OUT="*fp32", LSE="*fp32"), dict(KIND=kind, BLOCK=4096))
    comp(D._vlb_kernel, dict(X="*bf16", ZT="*i64", X0="*i64", C="*fp32", KL="*fp32", STATS="*fp32"), dict(KIND=kind, BLOCK=4096))
    comp(D._vlb_backward_kernel, dict(GRAD="*fp32", X="*fp32", ZT="*i64", X0="*i64", C="*fp32", STATS="*fp32", OUT="*fp32"),
         dict(KIND=kind, BLOCK=4096))
    comp(D._logprobs_backward_kernel, dict(GO="*fp32", X="*bf16", ZT="*i64", C="*fp32", LSE="*fp32", OUT="*bf16"),
         dict(KIND=kind, BLOCK=4096))
comp(S._reveal_kernel, dict(CONF="*fp32", MASKED="*i8", NREV="*i64", REVEAL="*i8"), dict(BLOCK_L=1024))
for kind in (0, 1, 2):
    comp(R._noise_kernel, dict(OUT="*i64" if kind == 0 else "*fp32", start=i64), dict(KIND=kind, BLOCK=1024))
print("compiled all")
''')


def test_sampling_and_diffusion_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0 and "compiled all" in proc.stdout, proc.stderr[-4000:]
