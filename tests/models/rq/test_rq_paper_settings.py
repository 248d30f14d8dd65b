"""Draft-and-Revise with the supplement's A.4 settings: the numbers of PAPER_SETTINGS, and no
temperature or guidance while drafting (both only in the revise phase), seen at every draw."""
import inspect

import torch

from vqfast.models.rq import PAPER_SETTINGS, ContextualRQTransformer, draft_and_revise
from vqfast.models.rq import sampler as sampler_module


def test_paper_settings_are_the_supplements():
    # supp. A.4: (M, T_revise) = (3, 2), (2, 2), (2, 2); guidance 1.4, 1.8, 2.0; temperature 0.8
    # in the revise phase only; T_draft = 64 (main paper)
    table = {"371M": (3, 2, 1.4), "821M": (2, 2, 1.8), "1.4B": (2, 2, 2.0)}
    assert set(PAPER_SETTINGS) == set(table)
    for name, (M, T_revise, guidance) in table.items():
        assert PAPER_SETTINGS[name] == dict(T_draft=64, T_revise=T_revise, M=M, revise_temperature=0.8,
                                            revise_guidance=guidance), name
    params = inspect.signature(draft_and_revise).parameters
    assert params["draft_temperature"].default == 1.0 and params["draft_guidance"].default == 1.0


def test_drafting_draws_without_temperature_or_guidance(monkeypatch):
    calls, sample = [], sampler_module.sample_logits

    def recording(logits, *args, **kw):
        calls.append((kw["temperature"], kw["cfg_scale"]))
        return sample(logits, *args, **kw)

    monkeypatch.setattr(sampler_module, "sample_logits", recording)
    torch.manual_seed(0)
    net = ContextualRQTransformer(codebook_size=16, grid=(2, 3), code_depth=2, dim=32, spatial_depth=1,
                                  depth_depth=1, num_classes=4).eval()
    settings = {**PAPER_SETTINGS["371M"], "T_draft": 3}
    draft_and_revise(net, batch_size=2, class_labels=torch.tensor([0, 3]), generator=0, backend="reference",
                     **settings)
    draft, revise = (1.0, None), (0.8, 1.4)
    assert set(calls) == {draft, revise}
    first_revise = calls.index(revise)
    assert all(c == draft for c in calls[:first_revise]) and all(c == revise for c in calls[first_revise:])
    # one draw per depth step: T_draft groups while drafting, M * T_revise groups while revising
    assert first_revise == settings["T_draft"] * net.code_depth
    assert len(calls) - first_revise == settings["M"] * settings["T_revise"] * net.code_depth
