"""PUT Algorithm 1 (vqfast.models.put.put_sample): every unknown filled once, known kept, reproducible."""
import pytest
import torch

from vqfast.data import CropSampler, make_masks
from vqfast.models.put.tokenizer import PVQVAE
from vqfast.models.put.transformer import UQTransformer
from vqfast.models.put.sampler import put_sample



@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    vae = PVQVAE.tiny()
    t = UQTransformer.tiny(n_layers=2, dim=64)
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
    features, known = vae.eval().encode(x, m)
    _, tokens, _ = vae.quantize(features, known)
    assert torch.equal(out.known, known)
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


def test_fused_and_reference_selection_agree(setup):
    vae, t, x, m = setup
    fused = put_sample(vae, t, x, m, num_samples=2, top_k=8, tokens_per_iter=2, generator=5, backend="auto")
    ref = put_sample(vae, t, x, m, num_samples=2, top_k=8, tokens_per_iter=2, generator=5, backend="reference")
    assert torch.equal(fused.tokens, ref.tokens) and torch.equal(fused.order, ref.order)


def test_bf16_autocast_runs_and_fills(setup):
    vae, t, x, m = setup
    out = put_sample(vae, t, x, m, num_samples=2, top_k=8, generator=0, autocast_dtype=torch.bfloat16)
    assert out.images.dtype == torch.float32 and bool((out.order[~out.known[:, None].expand_as(out.order)] >= 0).all())
