"""`python -m vqfast bench --quick`: each op's time on the vqfast CPU kernel beside what a
user would run instead, measured in this run: the best plain-PyTorch formulation of the
same result (addmm + argmin for the search, index_add_ for EMA statistics, topk / sort +
multinomial for sampling, the dense [B, L, K] posterior for diffusion) and faiss where it is
installed. The float64 reference is an oracle for tests, not a baseline, so it is not timed.
Ratios, not absolute times, are what compare across machines."""
from __future__ import annotations

import math
import time
from typing import Callable

import torch
import torch.nn.functional as F

from vqfast import _backend, ops
from vqfast.diffusion import CosineSchedule


def median_time(fn: Callable[[], object], repeats: int = 5) -> float:
    """Median seconds of fn() after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def gemm_flops(n: int = 1024, dtype=torch.float32) -> float:
    """Measured FLOP/s of an n x n x n matmul: the machine's ceiling for GEMM-bound ops."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n ** 3 / median_time(lambda: a @ b)


# ---------------------------------------------------------------- plain-PyTorch baselines

def _search(x: torch.Tensor, cb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest code by ||c||^2 - 2 x.c (one addmm) + argmin; the distance adds ||x||^2."""
    d = torch.addmm((cb.float() * cb.float()).sum(1), x.float(), cb.float().T, alpha=-2)
    dist, idx = d.min(1)
    return idx, dist + (x.float() * x.float()).sum(1)


def _quantize(x, cb):
    idx, _ = _search(x, cb)
    codes = cb.index_select(0, idx)
    return x + (codes - x).detach(), idx, F.mse_loss(x, codes)


def _dual(x, visible, e, e2):
    iv, _ = _search(x, e)
    im, _ = _search(x, e2)
    return torch.where(visible, iv, im + e.shape[0]), torch.where(visible[:, None], e[iv], e2[im])


def _residual(x, cb, depth):
    r, total, idx = x, torch.zeros_like(x), []
    for _ in range(depth):
        k, _ = _search(r, cb)
        c = cb.index_select(0, k)
        r, total = r - c, total + c
        idx.append(k)
    return total, torch.stack(idx, 1)


def _ema_statistics(x, idx, K):
    counts = torch.bincount(idx, minlength=K).float()
    return counts, x.new_zeros(K, x.shape[1]).index_add_(0, idx, x)


def _gumbel(shape, g):
    return -torch.log(-torch.log(torch.rand(shape, generator=g).clamp_min(1e-20)))


def _dense_posterior(x, z, t, sched, K):
    """log q(z_{t-1} | z_t, softmax(x)) [B, L, K] as dense tensors (VQ-DDM eqs. 20-21, uniform)."""
    ab, a = sched.alpha_bar[t - 1].float()[:, None, None], sched.alpha[t].float()[:, None, None]
    prev = torch.logaddexp(torch.log_softmax(x, -1) + ab.log(), ((1 - ab) / K).log())
    step = torch.where(torch.arange(K) == z[..., None], (a + (1 - a) / K).log(), ((1 - a) / K).log())
    return torch.log_softmax(prev + step, -1)


def _dense_vlb(x0, x, z, t, sched, K):
    lq = _dense_posterior(F.one_hot(x0, K).float().log(), z, t, sched, K)
    lp = _dense_posterior(x, z, t, sched, K)
    q = lq.exp()
    return (q * (lq - lp)).nan_to_num().sum(-1)


def _faiss_search():
    """A faiss IndexFlatL2 search when faiss is installed, else None."""
    try:
        import faiss
    except ImportError:
        return None

    def search(x, cb):
        index = faiss.IndexFlatL2(cb.shape[1])
        index.add(cb.numpy())
        return index.search(x.numpy(), 1)
    return search


# ---------------------------------------------------------------- cases

def _cases(quick: bool):
    """(op, shape, flops, vqfast callable, {baseline name: callable})."""
    n, k, d = (4096, 512, 128) if quick else (16384, 1024, 256)
    x, cb = torch.randn(n, d), torch.randn(k, d)
    shape, flops = f"N={n} K={k} d={d}", 2 * n * k * d
    faiss_search = _faiss_search()
    peers = {"addmm+argmin": lambda: _search(x, cb), "cdist+argmin": lambda: torch.cdist(x, cb).argmin(1)}
    if faiss_search is not None:
        peers["faiss"] = lambda: faiss_search(x, cb)
    yield "nearest_code", shape, flops, lambda: ops.nearest_code(x, cb), peers
    xb, cbb = x.bfloat16(), cb.bfloat16()
    yield ("nearest_code bf16", shape, flops, lambda: ops.nearest_code(xb, cbb),
           {"addmm+argmin": lambda: _search(xb, cbb)})
    yield "quantize", shape, flops, lambda: ops.quantize(x, cb), {"addmm+argmin+gather": lambda: _quantize(x, cb)}
    visible, e2 = torch.rand(n) < 0.6, torch.randn(k, d)
    yield ("dual_codebook_quantize", f"N={n} K=K2={k} d={d}", 2 * flops,
           lambda: ops.dual_codebook_quantize(x, visible, cb, e2),
           {"2x addmm+argmin": lambda: _dual(x, visible, cb, e2)})
    rn, depth, rk = (512, 4, 2048) if quick else (2048, 4, 16384)
    xr, cbr = x[:rn], torch.randn(rk, d)
    yield ("residual_quantize", f"N={rn} D={depth} K={rk} d={d}", 2 * rn * rk * d * depth,
           lambda: ops.residual_quantize(xr, cbr, depth), {"D x addmm+argmin": lambda: _residual(xr, cbr, depth)})
    idx = torch.randint(0, k, (n,))
    yield ("ema_statistics", shape, 0, lambda: ops.ema_statistics(x, idx, k),
           {"bincount+index_add_": lambda: _ema_statistics(x, idx, k),
            "one_hot matmul": lambda: F.one_hot(idx, k).float().T @ x})


def _diffusion_cases(quick: bool):
    b, l, k = (8, 256, 1024) if quick else (8, 1024, 4096)
    sched = CosineSchedule(4000)
    x, z, x0 = torch.randn(b, l, k), torch.randint(0, k, (b, l)), torch.randint(0, k, (b, l))
    t = torch.randint(1, 4001, (b,))
    g = torch.Generator().manual_seed(0)
    shape = f"B={b} L={l} K={k}"
    yield ("posterior_sample", shape, 0, lambda: ops.posterior_sample(x, z, t, sched, seed=0),
           {"dense posterior+Gumbel-max":
            lambda: (_dense_posterior(x, z, t, sched, k) + _gumbel(x.shape, g)).argmax(-1)})

    def fused():
        xg = x.detach().requires_grad_(True)
        ops.vlb_kl(x0, xg, z, t, sched).sum().backward()

    def dense():
        xg = x.detach().requires_grad_(True)
        _dense_vlb(x0, xg, z, t, sched, k).sum().backward()
    yield "vlb_kl fwd+bwd", shape, 0, fused, {"dense posterior+autograd": dense}


def _sampling_cases(quick: bool):
    b, l, v = (8, 256, 1024) if quick else (8, 1024, 16384)
    x = 3 * torch.randn(b, l, v)
    masked = torch.rand(b, l) < 0.5
    n = masked.sum(1) // 2
    g = torch.Generator().manual_seed(0)
    shape = f"B={b} L={l} V={v}"

    def maskgit():
        logp = torch.log_softmax(x, -1)
        tok = torch.multinomial(logp.exp().reshape(-1, v), 1, generator=g).reshape(b, l)
        conf = logp.gather(-1, tok[..., None]).squeeze(-1) + 4.5 * _gumbel((b, l), g)
        conf = conf.masked_fill(~masked, -math.inf)
        return tok, conf.topk(int(n.max()), dim=1).indices

    def put():
        y = torch.log_softmax(x, -1)
        pos = y.amax(-1).masked_fill(masked, -math.inf).topk(1, dim=1).indices
        rows = y.gather(1, pos[..., None].expand(-1, -1, v)).reshape(-1, v)
        vals, ids = rows.topk(50, dim=-1)
        return ids.gather(1, torch.multinomial(vals.softmax(-1), 1, generator=g))

    def top_k():
        vals, ids = x.reshape(-1, v).topk(50, dim=-1)
        return ids.gather(1, torch.multinomial(vals.softmax(-1), 1, generator=g))

    def top_p():
        s, ids = x.reshape(-1, v).sort(-1, descending=True)
        p = s.softmax(-1)
        s = s.masked_fill(p.cumsum(-1) - p >= 0.9, -math.inf)
        return ids.gather(1, torch.multinomial(s.softmax(-1), 1, generator=g))
    yield ("gumbel_topk_select", shape, 0, lambda: ops.gumbel_topk_select(x, masked, n, 4.5, "sample", seed=0),
           {"log_softmax+multinomial+topk": maskgit})
    yield ("select_and_sample_topk", shape, 0, lambda: ops.select_and_sample_topk(x, masked, 50, seed=0),
           {"log_softmax+topk+multinomial": put})
    yield ("sample_logits top-k", shape, 0, lambda: ops.sample_logits(x, 1.0, top_k=50, seed=0),
           {"topk+multinomial": top_k})
    yield ("sample_logits top-p", shape, 0, lambda: ops.sample_logits(x, 1.0, top_p=0.9, seed=0),
           {"sort+cumsum+multinomial": top_p})


def run(quick: bool = True) -> list[dict]:
    """Time every op's CPU kernel and its baselines; returns rows and prints a table."""
    if not _backend.backends()["cpu"]["available"]:
        raise _backend.BackendUnavailableError(f"the C++ CPU kernels are not built: "
                                               f"{_backend.backends()['cpu']['detail']}")
    ceiling = gemm_flops()
    rows = []
    for name, shape, flops, fast, peers in (*_cases(quick), *_diffusion_cases(quick), *_sampling_cases(quick)):
        t_fast = median_time(fast)
        for peer, fn in peers.items():
            t = median_time(fn)
            rows.append({"op": name, "shape": shape, "baseline": peer, "vqfast_ms": 1e3 * t_fast,
                         "baseline_ms": 1e3 * t, "speedup": t / t_fast,
                         "fraction_of_gemm": flops / t_fast / ceiling if flops else float("nan")})
    print(f"machine fp32 GEMM: {ceiling / 1e9:.1f} GFLOP/s, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'op':<24}{'shape':<26}{'vqfast ms':>10}{'of GEMM':>9}  {'baseline':<30}{'ms':>9}{'speedup':>9}")
    for r in rows:
        print(f"{r['op']:<24}{r['shape']:<26}{r['vqfast_ms']:>10.2f}{r['fraction_of_gemm']:>9.2f}  "
              f"{r['baseline']:<30}{r['baseline_ms']:>9.2f}{r['speedup']:>8.1f}x")
    return rows
