"""Index arithmetic past 2^31: element offsets N*d, N*K, B*L*V and the noise counters built from
row ids (row << 6 for categorical draws, position << 8 for posterior_sample) must be 64-bit.

The default run tests the boundaries without the memory: the noise helpers at element and row
indices past 2^31, 2^32 and 2^38 directly, and the Triton search kernels on views whose rows lie
past element 2^31 of an untouched (never paged in) allocation. The `slow` tests run real sizes:
rows past 2^26 and positions past 2^24 (the counters' 32-bit limits; ~0.3 GiB) and one op
just past 2^31 elements (4 GiB of bf16).
"""
import pytest
import torch

import vqfast
import vqfast.diffusion as D
from vqfast import random as _random
from vqfast.random import STREAM_CONFIDENCE, STREAM_TOKEN
from vqfast.reference import nearest_code as ref_nc
from vqfast.reference import random as R
from tests.conftest import available

TRITON = pytest.mark.skipif(not available("triton"), reason="triton backend not available")
CPU = pytest.mark.skipif(not available("cpu"), reason="cpu backend not available")
KEY = 0x9E3779B97F4A7C15
# Element indices whose counter (index >> 2) crosses 2^29, 2^30 (element 2^31, 2^32), 2^32 (the
# high counter word) and far beyond; every window holds elements on both sides.
STARTS = [2 ** 31 - 5, 2 ** 32 - 6, 2 ** 34 - 7, 2 ** 40 + 1, 2 ** 62 - 9]


def _noise(backend, start, n, kind):
    if backend == "cpu":
        kind_id = {"words": 0, "uniform": 1, "gumbel": 2}[kind]
        return torch.ops.vqfast_cpu.philox_noise(_random.key_as_int64(KEY), STREAM_TOKEN, start, n, kind_id)
    from vqfast.triton_kernels.random import noise_triton
    return noise_triton(KEY, STREAM_TOKEN, start, n, kind, "cpu")


@pytest.mark.parametrize("backend", [pytest.param("cpu", marks=CPU), pytest.param("triton", marks=TRITON)])
@pytest.mark.parametrize("start", STARTS, ids=lambda s: f"start{s:#x}")
def test_noise_at_element_indices_past_32_bits(backend, start):
    idx = torch.arange(start, start + 13)
    assert torch.equal(_noise(backend, start, 13, "words"), _random.words(KEY, STREAM_TOKEN, idx))
    got, want = _noise(backend, start, 13, "gumbel"), _random.gumbel(KEY, STREAM_TOKEN, idx)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))


if available("triton"):
    import triton
    import triton.language as tl
    from vqfast.triton_kernels.random import cat_trial_words, split_key

    @triton.jit
    def _trial_words_kernel(ROWS, OUT, key_lo, key_hi, stream):
        i = tl.program_id(0)
        trial = tl.program_id(1).to(tl.int64) * 63  # the first and the last trial
        w0, w1, w2, w3 = cat_trial_words(key_lo, key_hi, stream, tl.load(ROWS + i), trial)
        base = OUT + (i * 2 + tl.program_id(1)) * 4
        tl.store(base + 0, w0.to(tl.int64))
        tl.store(base + 1, w1.to(tl.int64))
        tl.store(base + 2, w2.to(tl.int64))
        tl.store(base + 3, w3.to(tl.int64))


@TRITON
def test_triton_trial_words_of_rows_past_2_26():
    """Row r's categorical trial j uses Philox block (r << 6) + j: rows >= 2^26 pass 2^32."""
    rows = torch.tensor([2 ** 26 - 1, 2 ** 26, 2 ** 32 + 3, 2 ** 50 + 5])
    out = torch.empty(rows.numel(), 2, 4, dtype=torch.int64)
    _trial_words_kernel[(rows.numel(), 2)](rows, out, *split_key(KEY), STREAM_TOKEN)
    blk = (rows[:, None] << 6) + torch.tensor([0, 63])
    want = torch.stack(_random.philox4x32(blk & 0xFFFFFFFF, blk >> 32, STREAM_TOKEN, 0, KEY), dim=-1)
    assert torch.equal(out, want)


def _rows_past_2_31(d, dtype, seed):
    """x [3, d] with row stride 2^30 + 3: row 2 starts at element 2^31 + 6 (an int32 row * stride
    wraps there) of an allocation whose other pages are never written, so never paged in."""
    stride = 2 ** 30 + 3
    storage = torch.empty(2 * stride + d, dtype=dtype)
    view = storage.as_strided((3, d), (stride, 1))
    view.copy_(torch.randn(3, d, generator=torch.Generator().manual_seed(seed)))
    return view


@TRITON
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_triton_search_reads_rows_past_element_2_31(dtype):
    """The search kernels take x by strides: rows at element offsets past 2^31."""
    from vqfast.ops.nearest_code import search_codebook
    from vqfast.triton_kernels.nearest_code import nearest_code_triton, quantize_triton

    x = _rows_past_2_31(24, dtype, 0)
    cb = torch.randn(9, 24, generator=torch.Generator().manual_seed(1)).to(dtype)
    want_idx, want_dist = ref_nc.nearest_code(x.clone(), cb)
    idx, dist = nearest_code_triton(x, search_codebook(cb, "l2"), "l2", cb)
    assert torch.equal(idx, want_idx)
    torch.testing.assert_close(dist, want_dist, atol=1e-3, rtol=1e-3)
    codes, idx = quantize_triton(x, search_codebook(cb, "l2"), "l2", cb)
    assert torch.equal(idx, want_idx) and torch.equal(codes, cb[want_idx])


# ---------------------------------------------------------------- real sizes (slow)

@pytest.mark.slow
@CPU
def test_sampling_rows_past_2_26():
    """Categorical draws of rows >= 2^26 (counter (r << 6) + j >= 2^32) and MaskGIT's confidence
    noise there equal the reference's at those row ids: 2^26 + 64 rows of V = 2 (0.25 GiB bf16)."""
    rows = torch.arange(2 ** 26 - 32, 2 ** 26 + 64)
    logits = torch.zeros(2 ** 26 + 64, 2, dtype=torch.bfloat16)
    logits[rows] = torch.randn(rows.numel(), 2, generator=torch.Generator().manual_seed(2)).bfloat16()
    tail = logits[rows].float()
    tok = vqfast.ops.sample_logits(logits, seed=KEY)
    assert torch.equal(tok[rows], R.categorical(tail, KEY, STREAM_TOKEN, rows))
    masked = torch.ones(1, logits.shape[0], dtype=torch.bool)
    sel = vqfast.ops.gumbel_topk_select(logits[None], masked, 0, 1.0, "sample", seed=KEY)
    want_tok = R.categorical(tail, KEY, STREAM_TOKEN, rows)
    assert torch.equal(sel.tokens[0, rows], want_tok)
    logp = torch.log_softmax(tail, -1).gather(1, want_tok[:, None]).squeeze(1)
    torch.testing.assert_close(sel.confidence[0, rows], logp + _random.gumbel(KEY, STREAM_CONFIDENCE, rows),
                               atol=2e-5, rtol=1e-5)


@pytest.mark.slow
@CPU
def test_posterior_sample_positions_past_2_24():
    """Position n's trials use Philox blocks (n << 8) + 3j + i: positions >= 2^24 pass 2^32. A 32-bit
    counter would give position 2^24 + j the noise of position j: the same inputs at j and 2^24 + j
    must not give the same 256 draws (chance 2^-256 with these inputs' ~1/2 odds per position)."""
    n, pairs = 2 ** 24, 256
    log_x0 = torch.zeros(1, n + pairs, 2)
    z_t = torch.zeros(1, n + pairs, dtype=torch.long)
    out = vqfast.ops.posterior_sample(log_x0, z_t, 50, D.CosineSchedule(50), seed=KEY)
    head, tail = out[0, :pairs], out[0, n:]
    assert 0 < int(tail.sum()) < pairs  # both states drawn at the tail positions
    assert not torch.equal(head, tail)


@pytest.mark.slow
@CPU
def test_ops_just_past_2_31_elements():
    """nearest_code, quantize and ema_statistics on x [2^25 + 64, 64] bf16 (2^31 + 4096 elements,
    4 GiB): the rows past element 2^31 are searched, gathered and summed as the reference does."""
    N, d, K = 2 ** 25 + 64, 64, 5
    x = torch.zeros(N, d, dtype=torch.bfloat16)
    tail = slice(N - 96, N)  # rows 2^25 - 32 .. 2^25 + 63 straddle element 2^31
    x[tail] = torch.randn(96, d, generator=torch.Generator().manual_seed(3)).bfloat16()
    cb = torch.randn(K, d, generator=torch.Generator().manual_seed(4)).bfloat16()
    want_idx, _ = ref_nc.nearest_code(x[tail], cb)
    idx, _ = vqfast.ops.nearest_code(x, cb)
    assert torch.equal(idx[tail], want_idx)
    q = vqfast.ops.quantize(x, cb)
    assert torch.equal(q.indices[tail], want_idx) and torch.equal(q.z_q[tail], cb[want_idx])
    del q
    member = torch.zeros(N, dtype=torch.long)
    member[tail] = K - 1  # code K - 1 holds exactly the rows past the boundary
    counts, sums = vqfast.ops.ema_statistics(x, member, K)
    assert counts[K - 1] == 96 and counts[0] == N - 96
    torch.testing.assert_close(sums[K - 1], x[tail].float().sum(0), atol=1e-4, rtol=1e-5)
