"""k-means: Lloyd vs the brute-force oracle, AFK-MC2 vs its reference chain, seeding options, bad inputs."""
import pytest
import torch

import vqfast
from vqfast.quantizers import clustering
from vqfast.reference import kmeans as ref


def blobs(P, K, d, seed, spread=0.3):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(K, d, generator=g) * 4
    return centers[torch.randint(0, K, (P,), generator=g)] + spread * torch.randn(P, d, generator=g)


@pytest.mark.parametrize("P, K, d", [(500, 8, 5), (1237, 31, 17), (64, 64, 3)])
def test_lloyd_matches_brute_force(P, K, d):
    x = blobs(P, K, d, seed=P)
    init = clustering.seed_centroids(x, K, "random", torch.Generator().manual_seed(1))
    res = vqfast.kmeans(x, K, iters=6, init=init)
    c, idx, inertia = ref.lloyd(x, init, iters=6)
    assert torch.equal(res.assignments, idx)
    torch.testing.assert_close(res.centroids.double(), c, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(res.inertia, inertia, rtol=1e-4, atol=1e-3)


def test_empty_clusters_are_reseeded_like_the_oracle():
    x = blobs(400, 6, 4, seed=7)
    init = x[:6].clone()
    init[1:4] = init[0]  # duplicates: three clusters are empty after the first assignment
    res = vqfast.kmeans(x, 6, iters=5, init=init)
    c, idx, inertia = ref.lloyd(x, init, iters=5)
    assert torch.equal(res.assignments, idx)
    assert torch.bincount(res.assignments, minlength=6).min() > 0
    torch.testing.assert_close(res.inertia, inertia, rtol=1e-4, atol=1e-3)


def test_afkmc2_matches_reference_chain():
    x = blobs(3000, 40, 9, seed=2, spread=1.0)
    K, m = 40, 25
    fast = clustering.afkmc2(x, K, m, torch.Generator().manual_seed(5))
    first, q, cand, u = clustering.afkmc2_draws(x, K, m, torch.Generator().manual_seed(5))
    assert torch.equal(fast, ref.afkmc2_chain(x, first, q, cand, u))


@pytest.mark.parametrize("init", ["afkmc2", "kmeans++", "random"])
def test_seeding_options_reproducible_and_monotone(init):
    x = blobs(2000, 16, 8, seed=3)
    a = vqfast.kmeans(x, 16, iters=8, init=init, generator=torch.Generator().manual_seed(0), chain_length=20)
    b = vqfast.kmeans(x, 16, iters=8, init=init, generator=torch.Generator().manual_seed(0), chain_length=20)
    assert torch.equal(a.centroids, b.centroids) and torch.equal(a.assignments, b.assignments)
    assert a.centroids.shape == (16, 8) and a.inertia.shape == (9,)
    assert torch.all(a.inertia[1:] <= a.inertia[:-1] * (1 + 1e-6))  # Lloyd never increases the inertia
    if init != "random":  # D^2-style seeds start far better than uniform ones on separated blobs
        r = vqfast.kmeans(x, 16, iters=0, init="random", generator=torch.Generator().manual_seed(0))
        assert a.inertia[0] < 0.5 * r.inertia[0]


def test_fp16_input_and_tol_stops_early():
    x = blobs(1000, 10, 6, seed=4).half()
    res = vqfast.kmeans(x, 10, iters=50, init="kmeans++", generator=torch.Generator().manual_seed(0), tol=1e-4)
    assert res.centroids.dtype == torch.float32 and res.inertia.numel() < 51


@pytest.mark.parametrize("kwargs, match, err", [
    (dict(K=0), "K must be >= 1", ValueError),
    (dict(K=501), "need P >= K", ValueError),
    (dict(iters=-1), "iters must be >= 0", ValueError),
    (dict(init="kmeans||"), "init must be one of", ValueError),
    (dict(init=torch.zeros(3, 4)), r"init must have shape \(5, 4\)", ValueError),
    (dict(chain_length=0), "chain_length must be >= 1", ValueError),
    (dict(x=torch.zeros(500, 4, dtype=torch.float64)), "x must have dtype", TypeError),
    (dict(x=torch.zeros(500)), "x must have 2 dims", ValueError),
])
def test_bad_inputs(kwargs, match, err):
    args = dict(x=torch.randn(500, 4), K=5, iters=2, init="random")
    args.update(kwargs)
    with pytest.raises(err, match=match):
        vqfast.kmeans(args.pop("x"), args.pop("K"), **args)


@pytest.mark.parametrize("seeding", [
    pytest.param(lambda x, K, g: clustering.afkmc2(x, K, 20, g), id="afkmc2"),
    pytest.param(clustering.kmeans_plus_plus, id="kmeans++"),
    pytest.param(lambda x, K, g: vqfast.kmeans(x, K, iters=2, generator=g, chain_length=20).centroids, id="kmeans"),
])
def test_int_seed_generators_and_seeding_bad_inputs(seeding):
    """An int seed is the generator it seeds; a bad generator, K > P or chain_length 0 are named errors."""
    x = blobs(300, 6, 4, seed=9)
    assert torch.equal(seeding(x, 6, 3), seeding(x, 6, torch.Generator().manual_seed(3)))
    with pytest.raises(TypeError, match="generator must be"):
        seeding(x, 6, "3")
    with pytest.raises(ValueError, match="need P >= K"):
        seeding(x[:5], 6, 3)


def test_afkmc2_chain_length_is_checked():
    with pytest.raises(ValueError, match="chain_length must be >= 1"):
        clustering.afkmc2(torch.randn(50, 3), 4, chain_length=0)
