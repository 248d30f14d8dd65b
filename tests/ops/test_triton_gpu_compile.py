"""The Triton kernels compile for a real GPU (sm_90) even on a machine without one.

The interpreter (TRITON_INTERPRET=1) runs the kernels' Python, not Triton's compiler:
type errors in tl.dot, shared-memory overflows and the like only show on a GPU. Here
each kernel is compiled (TTIR -> PTX -> cubin with Triton's bundled ptxas) with the
constexprs and block sizes its launcher would choose for a GPU. Runs in a subprocess:
this process has TRITON_INTERPRET=1 set, which the kernels read at import.
"""
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

SCRIPT = textwrap.dedent('''
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from vqfast.triton_kernels import _search
    from vqfast.triton_kernels.dual_codebook import _dual_codebook_kernel
    from vqfast.triton_kernels.nearest_code import _nearest_code_kernel
    from vqfast.triton_kernels.residual import _residual_kernel

    assert not _search.INTERPRET
    TY = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.int64: "i64", torch.uint8: "u8"}
    SMEM = 100 * 1024  # consumer GPUs (sm_86/89) give a block about 100 KiB

    def compile_kernel(fn, pointers, constexprs, b):
        sig = {}
        for p in fn.params:
            ptr = "*" + TY[pointers[p.name]] if p.name in pointers else "i32"
            sig[p.name] = "constexpr" if p.is_constexpr else ptr
        opts = {"num_warps": b.warps, "num_stages": b.stages}
        k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constexprs), target=GPUTarget("cuda", 90, 32),
                           options=opts)
        assert k.metadata.shared <= SMEM, (fn.__name__, constexprs, k.metadata.shared)

    def nearest(x_dtype, source_dtype, metric, d, write_q=True):
        cb = torch.randn(300, d)
        lay = _search.layout(cb, x_dtype, metric, source_dtype)
        b = _search.blocks(10000, 300, d, 4 if lay.dot_f32 else 2)
        ptrs = dict(X=x_dtype, C_HI=lay.hi.dtype, C_LO=lay.lo.dtype, C_SQ=torch.float32, SCALE=torch.float32,
                    SRC=source_dtype,
                    IDX=torch.int64, DIST=torch.float32, Q=x_dtype)
        compile_kernel(_nearest_code_kernel, ptrs, dict(IS_L2=metric == "l2", SPLIT=lay.split, DOT_F32=lay.dot_f32,
                       WRITE_Q=write_q, BLOCK_N=b.n, BLOCK_K=b.k, BLOCK_D=b.d), b)

    nearest(torch.float32, torch.float32, "l2", 64)
    nearest(torch.bfloat16, torch.bfloat16, "cosine", 256)  # hi/lo split, bf16 tensor-core dots
    nearest(torch.float16, torch.float16, "l2", 100)        # exact fp16 codebook, no split
    nearest(torch.float16, torch.float32, "l2", 512)        # fp32 dots, the largest tile that fits
    nearest(torch.bfloat16, torch.bfloat16, "l2", 64, write_q=False)  # nearest_code: l2 dist from the chosen code

    cb = torch.randn(300, 64)
    le = _search.layout(cb, torch.bfloat16, "l2", torch.bfloat16)
    lf = _search.layout(cb, torch.bfloat16, "l2", torch.float32)
    b = _search.blocks(10000, 300, 64, 2)
    bf = torch.bfloat16
    ptrs = dict(X=bf, VIS=torch.uint8, ORDER=torch.int64, E_HI=bf, E_LO=bf, E_SQ=torch.float32, E_SRC=bf,
                F_HI=bf, F_LO=bf, F_SQ=torch.float32, F_SRC=bf, SCALE=torch.float32, IDX=torch.int64, Q=bf)
    compile_kernel(_dual_codebook_kernel, ptrs, dict(IS_L2=True, E_SPLIT=le.split, F_SPLIT=lf.split, DOT_F32=False,
                   BLOCK_N=b.n, BLOCK_K=b.k, BLOCK_D=b.d), b)

    b = _search.blocks(10000, 300, 256, 4)
    ptrs = dict(X=bf, C=torch.float32, C_SQ=torch.float32, SCALE=torch.float32, SRC=torch.float32, IDX=torch.int64,
                Q=bf)
    compile_kernel(_residual_kernel, ptrs, dict(IS_L2=True, BLOCK_N=b.n, BLOCK_K=b.k, BLOCK_D=b.d), b)
    print("compiled")
''')


def test_triton_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-4000:]
