"""AFK-MC2's proposal distribution (Bachem et al. 2016, Alg. 1; VQ-DDM's ReFiT seeding),
written out here independently of vqfast.quantizers.clustering:
    q(x) = 1/2 * d(x, c1)^2 / sum_x' d(x', c1)^2 + 1 / (2n)."""
import torch

from vqfast.quantizers import clustering


def _proposal(points: list[list[float]], first: int) -> list[float]:
    c1 = points[first]
    d2 = [sum((a - b) ** 2 for a, b in zip(p, c1)) for p in points]
    n, total = len(points), sum(d2)
    return [0.5 * d / total + 0.5 / n for d in d2]


def test_proposal_matches_the_formula():
    x = torch.randn(37, 5, generator=torch.Generator().manual_seed(0))
    first, q, _, _ = clustering.afkmc2_draws(x, 4, 3, torch.Generator().manual_seed(1))
    expected = torch.tensor(_proposal(x.double().tolist(), first), dtype=torch.float64)
    assert q.dtype == torch.float64
    torch.testing.assert_close(q, expected, rtol=1e-6, atol=1e-12)
    assert abs(float(q.sum()) - 1.0) < 1e-12


def test_candidates_are_drawn_from_the_proposal():
    x = torch.tensor([[0.0], [1.0], [3.0], [-2.0], [0.5]])
    K, m = 2, 40000
    first, _, cand, _ = clustering.afkmc2_draws(x, K, m, torch.Generator().manual_seed(2))
    expected = torch.tensor(_proposal(x.tolist(), first), dtype=torch.float64)
    freq = torch.bincount(cand.flatten(), minlength=len(x)).double() / cand.numel()
    # binomial standard error at m = 40000 draws is below 0.0025: 4 sigma
    assert (freq - expected).abs().max() < 0.01
