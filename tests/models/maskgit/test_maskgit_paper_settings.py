"""MaskGIT settings no other test pins: the choice-temperature annealing of iterative decoding
(Sec. 3.2; official 4.5 * (1 - (t + 1) / T)) and the label smoothing of the MVTM loss (the
official config's 0.1), each against a formula written out here."""
import inspect

import torch

from vqfast.models.maskgit import BidirectionalTransformer, maskgit_decode
from vqfast.models.maskgit import sampler as sampler_module


def test_choice_temperature_anneals_linearly_from_4_5(monkeypatch):
    taus, select = [], sampler_module.ops.gumbel_topk_select

    def recording(logits, masked, count, tau, **kw):
        taus.append(float(tau))
        return select(logits, masked, count, tau, **kw)

    monkeypatch.setattr(sampler_module.ops, "gumbel_topk_select", recording)
    assert inspect.signature(maskgit_decode).parameters["choice_temperature"].default == 4.5
    torch.manual_seed(0)
    net = BidirectionalTransformer.from_preset("tiny").eval()
    T = 6
    maskgit_decode(net, batch_size=2, steps=T, generator=0, backend="reference")
    expected = [4.5 - 4.5 * step / T for step in range(1, T + 1)]  # step = 1..T: the ratio of steps done
    assert len(taus) == T and max(abs(a - b) for a, b in zip(taus, expected)) < 1e-12


def test_label_smoothing_default_and_its_targets():
    torch.manual_seed(0)
    net = BidirectionalTransformer.from_preset("tiny").eval()
    assert all(BidirectionalTransformer.PRESETS[p].get("label_smoothing", 0.1) == 0.1
               for p in BidirectionalTransformer.PRESETS)
    assert net.config["label_smoothing"] == 0.1
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, net.codebook_size, (2, net.seq_len), generator=g)
    mask = torch.rand(2, net.seq_len, generator=g) < 0.5
    with torch.no_grad():
        got = net.loss(tokens, mask=mask).total
        log_p = torch.log_softmax(net(tokens.masked_fill(mask, net.mask_id)).double(), -1)[mask]
    K, s = net.codebook_size, 0.1
    targets = torch.full_like(log_p, s / K)
    targets[torch.arange(len(targets)), tokens[mask]] += 1 - s
    torch.testing.assert_close(got.double(), -(targets * log_p).sum(-1).mean(), rtol=1e-5, atol=1e-6)
