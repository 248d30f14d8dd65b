"""vlb_kl / posterior_logprobs with -inf logits: the reference's autograd gives finite
gradients (no 0 * inf, no logaddexp(-inf, -inf)), and every backend agrees with it."""
import pytest
import torch

import vqfast.diffusion as D
from vqfast import ops
from tests.conftest import backend_params

SCHEDULES = {T: D.CosineSchedule(T) for T in (1, 50)}


def _case(kind, T, K=37, B=3, L=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, L, K, generator=g) * 3
    x[..., : K // 3] = -torch.inf  # a third of the ids impossible under the model
    x0 = torch.randint(K // 3, K, (B, L), generator=g)  # true tokens the model allows: finite KL
    z_t = torch.randint(0, K, (B, L), generator=g)
    if kind == "absorbing":
        z_t[:, ::2] = K  # masked positions
    t = torch.tensor([1, T, max(1, T // 2)])
    return x, x0, z_t, t


@pytest.mark.parametrize("backend", backend_params("reference", *ops.diffusion.HAS))
@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
@pytest.mark.parametrize("T", [1, 50])
def test_vlb_kl_gradient_with_impossible_ids(backend, kind, T):
    x, x0, z_t, t = _case(kind, T)
    sched = SCHEDULES[T]
    w = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    grads = []
    for b in ("reference", backend):
        leaf = x.clone().requires_grad_(True)
        kl = ops.vlb_kl(x0, leaf, z_t, t, sched, transition=kind, backend=b)
        assert torch.isfinite(kl).all()
        (kl * w).sum().backward()
        grads.append(leaf.grad)
    want, got = grads
    assert torch.isfinite(want).all(), "reference gradient has NaN/inf"
    assert torch.all(want[x == -torch.inf] == 0)
    torch.testing.assert_close(got, want.to(got.dtype), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
def test_reference_posterior_logprobs_gradient_is_finite(kind):
    x, _, z_t, t = _case(kind, 50)
    x[0, 0, z_t[0, 0].clamp_max(x.shape[-1] - 1)] = -torch.inf  # unmasked z_t the model rules out: a row of -inf
    leaf = x.clone().requires_grad_(True)
    out = ops.posterior_logprobs(leaf, z_t, t, SCHEDULES[50], transition=kind, backend="reference")
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).masked_fill(out == -torch.inf, 0)
    (out.masked_fill(out == -torch.inf, 0) * upstream).sum().backward()
    assert torch.isfinite(leaf.grad).all()
