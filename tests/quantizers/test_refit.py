"""ReFiT on a toy tokenizer whose codebook started collapsed: usage must rise."""
import pytest
import torch

from vqfast.quantizers import VectorQuantizer, refit, sample_features


class ToyTokenizer:
    """encode_features: a fixed 1x1 convolution [B, 3, H, W] -> [B, d, H, W]; quantizer: VectorQuantizer."""

    def __init__(self, d=6, K=32):
        g = torch.Generator().manual_seed(0)
        self.proj = torch.randn(d, 3, generator=g)
        self.quantizer = VectorQuantizer(d, K)
        collapsed = torch.randn(K, d, generator=g) * 1e-3 + 40  # every code in one far corner
        collapsed[0] = 0
        self.quantizer.replace_codebook(collapsed)
        self.calls = 0

    def encode_features(self, images):
        self.calls += images.shape[0]
        return torch.einsum("dc,bchw->bdhw", self.proj, images)


def images(n, seed):
    palette = torch.randn(40, 3, generator=torch.Generator().manual_seed(0)) * 3  # 40 clusters of features
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(0, 40, (n, 8, 8), generator=g)
    return (palette[pick] + 0.05 * torch.randn(n, 8, 8, 3, generator=g)).permute(0, 3, 1, 2)


def test_refit_raises_usage_on_heldout():
    tok = ToyTokenizer()
    train, heldout = images(64, 1), images(16, 2)
    report = refit(tok, train, P=3000, heldout=heldout, iters=10, chain_length=20,
                   generator=torch.Generator().manual_seed(0))
    assert report.usage_before <= 2 / 32
    assert report.usage_after >= 0.9
    assert report.kmeans.centroids.shape == (32, 6)
    assert torch.equal(tok.quantizer.codebook, report.kmeans.centroids)


def test_refit_can_shrink_the_codebook():
    tok = ToyTokenizer(K=64)
    report = refit(tok, images(32, 3), P=2000, K=16, iters=5, init="kmeans++",
                   generator=torch.Generator().manual_seed(1))
    assert tok.quantizer.codebook_size == 16 and report.usage_after == 1.0


def test_sample_features_draws_image_then_position():
    tok = ToyTokenizer()
    imgs = images(10, 4)
    feats = sample_features(tok, imgs, 500, generator=torch.Generator().manual_seed(2), batch_size=3)
    assert feats.shape == (500, 6) and tok.calls <= 10  # each drawn image encoded once
    every = tok.encode_features(imgs).permute(0, 2, 3, 1).reshape(-1, 6)
    d = torch.cdist(feats, every, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values
    assert torch.all(d < 1e-4)  # every sample is one of the images' features
    again = sample_features(tok, imgs, 500, generator=torch.Generator().manual_seed(2), batch_size=3)
    assert torch.equal(feats, again)


def test_refit_bad_inputs():
    with pytest.raises(TypeError, match="encode_features"):
        refit(object(), torch.zeros(2, 3, 4, 4), P=100)
    with pytest.raises(ValueError, match="need P >= K"):
        refit(ToyTokenizer(), images(4, 0), P=10)


def test_sample_features_int_seed_and_bad_sizes():
    """An int seed is the generator it seeds; P and batch_size are named (P = 0 returned None,
    batch_size = 0 was range()'s ValueError, an int generator randint's TypeError)."""
    tok, imgs = ToyTokenizer(), images(6, 5)
    assert torch.equal(sample_features(tok, imgs, 50, generator=7),
                       sample_features(tok, imgs, 50, generator=torch.Generator().manual_seed(7)))
    with pytest.raises(ValueError, match="P must be >= 1"):
        sample_features(tok, imgs, 0)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        sample_features(tok, imgs, 50, batch_size=0)
    with pytest.raises(TypeError, match="P must be an int"):
        refit(tok, imgs, P=100.0)
    with pytest.raises(ValueError, match="images must be a tensor"):
        sample_features(tok, imgs[:0], 50)
    report = refit(ToyTokenizer(), images(16, 6), P=500, iters=2, init="kmeans++", generator=3)
    assert report.kmeans.centroids.shape == (32, 6)
