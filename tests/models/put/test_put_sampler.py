"""PUT Algorithm 1 (vqfast.models.put.put_sample): every unknown filled once, known kept, reproducible."""
import pytest
import torch

from vqfast.data import CropSampler, make_masks
from vqfast.models.put import PVQVAE, UQTransformer, put_fill, put_sample


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    vae = PVQVAE.from_preset("tiny")
    t = UQTransformer.from_preset("tiny", depth=2, dim=64)
    x = CropSampler("test", size=32).sample(2, generator=0)
    m = make_masks("box", 2, 32, 32, generator=3)
    m[1] = make_masks("strokes", 1, 32, 32, generator=4)[0]  # rows with different unknown counts
    return vae, t, x, m


@pytest.mark.parametrize("tokens_per_iter", [1, 3])
def test_fills_each_unknown_once_and_keeps_known(setup, tokens_per_iter):
    vae, t, x, m = setup
    S = 3
    out = put_sample(vae, t, x, m, num_samples=S, top_k=8, tokens_per_iter=tokens_per_iter, generator=0)
    assert out.images.shape == (2, S, 3, 32, 32) and out.tokens.shape == (2, S, 8, 8)
    enc = vae.eval().encode(x, m)
    tokens, known = enc.tokens, ~enc.mask
    assert torch.equal(~out.mask, known)
    K = vae.codebook_size
    for b in range(2):
        unknown = ~known[b]
        n_unknown = int(unknown.sum())
        for s in range(S):
            order = out.order[b, s]
            assert bool((order[known[b]] == -1).all())
            assert torch.equal(out.tokens[b, s][known[b]], tokens[b][known[b]])  # never changed
            filled = order[unknown]
            assert bool((filled >= 0).all())  # every unknown filled
            counts = torch.bincount(filled, minlength=int(filled.max()) + 1)
            # tokens_per_iter positions per forward pass (fewer only at the end), none twice.
            assert int(counts.max()) <= tokens_per_iter and int(counts.sum()) == n_unknown
            assert int(filled.max()) == -(-n_unknown // tokens_per_iter) - 1
            assert bool((out.tokens[b, s][unknown] < K).all())  # sampled tokens come from e
    assert out.iterations == -(-int((~known).sum((1, 2)).max()) // tokens_per_iter)


def test_same_seed_same_completion(setup):
    vae, t, x, m = setup
    a = put_sample(vae, t, x, m, num_samples=2, top_k=16, generator=7)
    b = put_sample(vae, t, x, m, num_samples=2, top_k=16, generator=torch.Generator().manual_seed(7))
    c = put_sample(vae, t, x, m, num_samples=2, top_k=16, generator=8)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.order, b.order)
    assert torch.allclose(a.images, b.images)
    assert not torch.equal(a.tokens, c.tokens)
    # Pluralistic: the samples of one image differ.
    assert not torch.equal(a.tokens[0, 0], a.tokens[0, 1])


def test_max_iterations_and_top1(setup):
    vae, t, x, m = setup
    out = put_sample(vae, t, x, m, top_k=1, max_iterations=2, generator=0)
    assert out.iterations == 2
    assert int((out.order >= 0).sum()) == 2 * 2  # one per image per pass
    assert bool((out.order == -2).any())  # the rest left unfilled, decoded from e'
    greedy = put_sample(vae, t, x, m, top_k=1, generator=1)
    again = put_sample(vae, t, x, m, top_k=1, generator=2)
    assert torch.equal(greedy.tokens, again.tokens)  # top-1 is deterministic


def test_bad_inputs(setup):
    vae, t, x, m = setup
    with pytest.raises(ValueError, match="mask must have shape"):
        put_sample(vae, t, x, m[:, :8, :8])
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        put_sample(vae, t, x[..., :30], m[..., :30])
    with pytest.raises(ValueError, match="top_k"):
        put_sample(vae, t, x, m, top_k=0)
    with pytest.raises(ValueError, match="top_k must be <="):
        put_sample(vae, t, x, m, top_k=10_000)
    with pytest.raises(ValueError, match="num_samples"):
        put_sample(vae, t, x, m, num_samples=0)
    with pytest.raises(ValueError, match="temperature"):
        put_sample(vae, t, x, m, temperature=0.0)
    with pytest.raises(ValueError, match="temperature must be finite"):
        put_sample(vae, t, x, m, temperature=float("inf"))
    with pytest.raises(TypeError, match="temperature must be a real number"):  # was a bare '>' TypeError
        put_sample(vae, t, x, m, temperature="1")


def test_fused_and_reference_selection_agree(setup):
    vae, t, x, m = setup
    fused = put_sample(vae, t, x, m, num_samples=2, top_k=8, tokens_per_iter=2, generator=5, backend="auto")
    ref = put_sample(vae, t, x, m, num_samples=2, top_k=8, tokens_per_iter=2, generator=5, backend="reference")
    assert torch.equal(fused.tokens, ref.tokens) and torch.equal(fused.order, ref.order)


def test_bf16_autocast_runs_and_fills(setup):
    vae, t, x, m = setup
    out = put_sample(vae, t, x, m, num_samples=2, top_k=8, generator=0, autocast_dtype=torch.bfloat16)
    assert out.images.dtype == torch.float32 and bool((out.order[out.mask[:, None].expand_as(out.order)] >= 0).all())


def test_bad_sampler_inputs(setup):
    vae, t, x, m = setup
    with pytest.raises(ValueError, match="32x32"):
        put_sample(vae, t, torch.zeros(2, 3, 64, 64), torch.zeros(2, 64, 64, dtype=torch.bool))
    with pytest.raises(ValueError, match="seq_len=16"):
        put_sample(vae, UQTransformer.from_preset("tiny", seq_len=16), x, m)
    with pytest.raises(TypeError, match="generator"):
        put_sample(vae, t, x, m, generator="7")
    enc = vae.eval().encode(x, m)
    feats, toks, miss = enc.features.flatten(1, 2), enc.tokens.flatten(1), enc.mask.flatten(1)
    with pytest.raises(TypeError, match="known must be a torch.int64"):
        put_fill(t, vae.codes, feats, miss, miss)
    with pytest.raises(TypeError, match="mask must be a torch.bool"):
        put_fill(t, vae.codes, feats, toks, toks)
    with pytest.raises(ValueError, match="mask must have shape"):
        put_fill(t, vae.codes, feats, toks, miss[:, :10])
    with pytest.raises(ValueError, match="features must be a float tensor"):
        put_fill(t, vae.codes, toks, toks, miss)


def test_put_fill_is_algorithm_1_step_2_of_put_sample(setup):
    """put_sample = encode, put_fill on the token sequences, decode_tokens: same tokens from the same seed."""
    vae, t, x, m = setup
    out = put_sample(vae, t, x, m, top_k=8, tokens_per_iter=2, generator=3)
    enc = vae.eval().encode(x, m)
    fill = put_fill(t.eval(), vae.codes, enc.features.flatten(1, 2), enc.tokens.flatten(1), enc.mask.flatten(1),
                    top_k=8, tokens_per_iter=2, generator=3)
    assert fill._fields[0] == "tokens" and not bool(fill.mask.any())
    assert torch.equal(fill.tokens.reshape(out.tokens.shape), out.tokens)
    assert torch.equal(fill.order.reshape(out.order.shape), out.order)
    assert torch.equal(vae.decode_tokens(fill.tokens.reshape(enc.tokens.shape), x, m), out.images[:, 0])
