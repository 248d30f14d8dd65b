"""Quantizer modules on inputs a user may get wrong: indices outside the token space."""
import pytest
import torch

from vqfast.quantizers import Codebook, DualCodebookQuantizer, ResidualQuantizer, VectorQuantizer, perplexity, usage


@pytest.mark.parametrize("module, bad", [
    (VectorQuantizer(8, 16), torch.tensor([3, 16])),
    (VectorQuantizer(8, 16), torch.tensor([-1, 2])),
    (DualCodebookQuantizer(8, 16, 4), torch.tensor([19, 20])),
    (ResidualQuantizer(8, 16, 3), torch.tensor([[0, 1, 16]])),
])
def test_indices_to_codes_out_of_range(module, bad):
    with pytest.raises(ValueError, match=r"indices must be in \[0, "):
        module.indices_to_codes(bad)
    with pytest.raises(ValueError, match=r"indices must be in \[0, "):
        module.statistics(bad)


def test_indices_to_codes_dtypes_and_depth():
    vq = VectorQuantizer(8, 16)
    with pytest.raises(TypeError, match="indices must have dtype"):
        vq.indices_to_codes(torch.tensor([1.0]))
    torch.testing.assert_close(vq.indices_to_codes(torch.tensor([3], dtype=torch.uint8)), vq.codebook[[3]])
    assert vq.indices_to_codes(torch.zeros(0, 5, dtype=torch.long)).shape == (0, 5, 8)
    rq = ResidualQuantizer(8, 16, 3)
    for bad in (torch.tensor([[0, 1]]), torch.tensor([[0, 1, 2, 3]]), torch.tensor(1)):
        with pytest.raises(ValueError, match="indices must have 3 indices per position"):
            rq.indices_to_codes(bad)
    torch.testing.assert_close(rq.indices_to_codes(torch.tensor([[1, 2, 3]])),
                               (rq.codebook[1] + rq.codebook[2] + rq.codebook[3])[None])


def test_kmeans_init_under_inference_mode_then_training():
    """The k-means init of a first training step run under inference_mode must not leave
    inference tensors behind (later EMA steps update them in place)."""
    vq = VectorQuantizer(8, 16, kmeans_init=True)
    with torch.inference_mode():
        vq(torch.randn(40, 8))
    assert bool(vq.codebook_state.initted)
    before = vq.codebook.clone()
    vq(torch.randn(40, 8))
    assert not torch.equal(vq.codebook, before)


@pytest.mark.parametrize("init", ["afkmc2", "kmeans++", "random"])
def test_kmeans_single_centroid_is_the_mean(init):
    from vqfast.quantizers import kmeans

    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    res = kmeans(x, 1, iters=2, init=init, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(res.centroids[0], x.mean(0))
    assert torch.equal(res.assignments, torch.zeros(50, dtype=torch.long))


def test_dual_zero_masked_codes_rejected():
    with pytest.raises(ValueError, match="codebook_size must be >= 1"):
        DualCodebookQuantizer(8, 16, 0)  # was taken as "default" and gave K' = 16


def test_refit_zero_codes_rejected():
    from vqfast.quantizers import refit

    class Tokenizer:
        quantizer = VectorQuantizer(4, 16)

        def encode_features(self, images):
            return images

    with pytest.raises(ValueError, match="K must be >= 1"):
        refit(Tokenizer(), torch.randn(4, 4, 3, 3), P=50, K=0)  # was taken as "keep K"


@pytest.mark.parametrize("call, err, match", [
    (lambda: VectorQuantizer(1, 4)(torch.tensor(1.0)), ValueError, "x must have at least 1 dims"),
    (lambda: VectorQuantizer(8, 4, channel_first=True)(torch.randn(8)), ValueError, "x must have at least 2 dims"),
    (lambda: VectorQuantizer(8, 4)([1.0] * 8), TypeError, "x must be a torch.Tensor"),
    (lambda: VectorQuantizer(8, 4)(torch.ones(3, 8, dtype=torch.int32)), TypeError, "x must have dtype"),
    (lambda: DualCodebookQuantizer(1, 4)(torch.tensor(1.0), torch.tensor(True)), ValueError, "at least 1 dims"),
    (lambda: ResidualQuantizer(8, 4, 2, channel_first=True)(torch.randn(8)), ValueError, "at least 2 dims"),
    (lambda: VectorQuantizer(8, 4, channel_first=True).indices_to_codes(torch.tensor(1)), ValueError, "batch dim"),
    (lambda: VectorQuantizer(8, 4, commitment_weight="0.25"), TypeError, "commitment_weight must be a real number"),
    (lambda: ResidualQuantizer(8, 4, 2, commitment_weight=float("nan")), ValueError,
     "commitment_weight must be finite"),
    (lambda: DualCodebookQuantizer(8, 4, commitment_weight=-1.0), ValueError, "commitment_weight must be >= 0"),
    (lambda: VectorQuantizer(8, 4, threshold_dead_code="1"), TypeError, "threshold_dead_code must be a real number"),
    (lambda: VectorQuantizer(8, 4, seed=1.5), TypeError, "seed must be an int"),
    (lambda: VectorQuantizer(8, 4).replace_codebook([[0.0] * 8]), TypeError, "centroids must be a torch.Tensor"),
    (lambda: perplexity(torch.tensor([0, 1]), 4.0), TypeError, "K must be an int"),
    (lambda: usage(torch.tensor([0, 1]), 0), ValueError, "K must be >= 1"),
    (lambda: Codebook(8, 4).update(None, None), ValueError, "needs x and idx, or stats"),
])
def test_module_inputs_of_wrong_rank_or_type(call, err, match):
    """Named errors, not IndexError/AttributeError from inside the module."""
    with pytest.raises(err, match=match):
        call()


@pytest.mark.parametrize("make", [
    lambda: VectorQuantizer(8, 10, threshold_dead_code=2.0),
    lambda: VectorQuantizer(8, 10, decay=None),
    lambda: VectorQuantizer(8, 10, kmeans_init=True),
    lambda: ResidualQuantizer(8, 10, 2),
    lambda: DualCodebookQuantizer(8, 10, threshold_dead_code=2.0),
])
def test_empty_training_batch(make):
    """A training step on a batch with no rows: NaN losses (as mse_loss), finite state, backward runs;
    k-means init waits for a batch with rows."""
    module = make()
    x = torch.randn(0, 3, 8, requires_grad=True)
    args = (x, torch.zeros(0, 3, dtype=torch.bool)) if isinstance(module, DualCodebookQuantizer) else (x,)
    z_q, idx, loss = module(*args)
    assert z_q.shape == x.shape and idx.shape[:2] == (0, 3) and loss.total.isnan()
    (loss.total + z_q.sum()).backward()
    assert all(t.isfinite().all() for t in module.state_dict().values() if t.is_floating_point())
    if isinstance(module, VectorQuantizer) and module.kmeans_init:
        assert not bool(module.codebook_state.initted)
        module(torch.randn(40, 8))
        assert bool(module.codebook_state.initted)


@pytest.mark.parametrize("decay, eps", [(0.0, 1e-5), (0.0, 0.0)])
def test_ema_codes_without_mass_keep_their_vector(decay, eps):
    """decay 0 (allowed) with an empty batch, or eps 0 with unused codes, gives 0 / 0 in the
    EMA quotient: those codes keep their vectors instead of turning NaN (and dead for good)."""
    vq = VectorQuantizer(4, 8, decay=decay, eps=eps)
    before = vq.codebook.clone()
    vq(torch.randn(0, 4))
    assert torch.equal(vq.codebook, before)
    x = torch.randn(3, 4)
    _, idx, _ = vq(x)
    assert vq.codebook.isfinite().all()
    used = idx.unique()
    unused = torch.ones(8, dtype=torch.bool)
    unused[used] = False
    if eps == 0:  # with eps > 0 the smoothed quotient of an unused code is 0 / eps = 0, as the equation says
        assert torch.equal(vq.codebook[unused], before[unused])
