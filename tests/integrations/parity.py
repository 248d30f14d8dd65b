"""Side-by-side helpers: the peer's module unpatched and a deep copy of it patched, same inputs,
same upstream gradient (one reference per comparison, as the op tests do)."""
from __future__ import annotations

import copy

import torch


def twin(module: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(module, an independent deep copy): one runs unpatched, the other patched."""
    return module, copy.deepcopy(module)


def leaf(x: torch.Tensor, requires_grad: bool = True) -> torch.Tensor:
    return x.detach().clone().requires_grad_(requires_grad)


def assert_same_codes(x: torch.Tensor, codebook: torch.Tensor, idx_peer: torch.Tensor, idx_ours: torch.Tensor,
                      metric: str = "l2", rtol: float = 1e-5) -> None:
    """Indices equal, except rows where the peer's rounding picked a different code at the same
    distance: there the two chosen codes' fp64 distances to the row agree within rtol (ties)."""
    x64, c64 = x.detach().reshape(-1, x.shape[-1]).double(), codebook.detach().double()
    if metric == "cosine":
        x64, c64 = torch.nn.functional.normalize(x64, dim=-1), torch.nn.functional.normalize(c64, dim=-1)
    ip, io = idx_peer.reshape(-1), idx_ours.reshape(-1)
    differ = (ip != io).nonzero().squeeze(1)
    assert differ.numel() <= max(2, ip.numel() // 100), f"{differ.numel()} of {ip.numel()} indices differ"
    if differ.numel():
        dp = (x64[differ] - c64[ip[differ]]).square().sum(-1)
        do = (x64[differ] - c64[io[differ]]).square().sum(-1)
        torch.testing.assert_close(do, dp, rtol=rtol, atol=rtol)


def assert_close(a, b, dtype: torch.dtype, what: str) -> None:
    """fp32: rounding-level agreement; bf16: the peer itself rounds every op to bf16 (8 bits)."""
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(a.float(), b.float(), **tol, msg=lambda m: f"{what}: {m}")


def assert_no_worse(ours: torch.Tensor, peer: torch.Tensor, oracle: torch.Tensor, what: str,
                    atol: float = 1e-3) -> None:
    """Low precision: vqfast's max error against the fp32 oracle is at most twice the peer's own
    (+atol), the op tests' rule for tolerances relative to PyTorch's error."""
    err_ours = (ours.float() - oracle.float()).abs().max().item()
    err_peer = (peer.float() - oracle.float()).abs().max().item()
    assert err_ours <= 2 * err_peer + atol, f"{what}: vqfast error {err_ours:.3g} > 2 x peer error {err_peer:.3g}"


def assert_codes_no_worse(x: torch.Tensor, codebook: torch.Tensor, idx_peer: torch.Tensor, idx_ours: torch.Tensor,
                          rtol: float = 1e-5) -> None:
    """Low precision: the peer ranks by distances rounded to the input dtype, so its pick can be
    off; vqfast's pick is never farther (fp64 distance) than the peer's."""
    x64, c64 = x.detach().reshape(-1, x.shape[-1]).double(), codebook.detach().double()
    dp = (x64 - c64[idx_peer.reshape(-1)]).square().sum(-1)
    do = (x64 - c64[idx_ours.reshape(-1)]).square().sum(-1)
    assert bool((do <= dp * (1 + rtol) + rtol).all()), f"max excess {(do - dp).max().item():.3g}"
