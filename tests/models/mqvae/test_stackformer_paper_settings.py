"""stackformer_sample's filter defaults: the official sampler's (code top-k 100 / top-p 0.95,
position top-k 10 / top-p 0.95), in the signature and at every draw."""
import inspect

import torch

from vqfast.models.mqvae import Stackformer, stackformer_sample
from vqfast.models.mqvae import sampler as sampler_module

OFFICIAL = dict(code_top_k=100, code_top_p=0.95, position_top_k=10, position_top_p=0.95)


def test_filter_defaults_are_the_official_samplers():
    params = inspect.signature(stackformer_sample).parameters
    assert {k: params[k].default for k in OFFICIAL} == OFFICIAL


def test_every_draw_uses_the_default_filters(monkeypatch):
    calls, sample = [], sampler_module.ops.sample_logits

    def recording(logits, temperature, **kw):
        calls.append((logits.shape[-1], kw["top_k"], kw["top_p"]))
        return sample(logits, temperature, **kw)

    monkeypatch.setattr(sampler_module.ops, "sample_logits", recording)
    torch.manual_seed(0)
    net = Stackformer.from_preset("tiny").eval()
    stackformer_sample(net, batch_size=2, num_tokens=5, generator=0, backend="reference")
    code, position = net.codebook_size, net.num_positions + 1  # the two heads' widths
    assert sorted(set(calls)) == sorted({(code, 100, 0.95), (position, 10, 0.95)})
    assert len(calls) == 2 * 5
