"""Draft-and-Revise: partitions, per-step updates, inpainting, guidance, seeds, strategies, arguments."""
import pytest
import torch

from tests.conftest import backend_params
from vqfast.models.rq import PAPER_SETTINGS, ContextualRQTransformer, RQSample, Step, draft_and_revise, random_partition


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    net = ContextualRQTransformer(codebook_size=24, grid=(4, 5), code_depth=3, dim=32, spatial_depth=2,
                                  depth_depth=1, num_classes=5).eval()
    with torch.no_grad():  # at init (std 0.02) every logit is ~0 and the class barely matters: make them matter
        for p in net.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(p.numel()))
    return net


def _region(B=3, seed=0):
    m = torch.rand(B, 4, 5, generator=torch.Generator().manual_seed(seed)) < 0.5
    m[:, 0, 0] = True  # at least one position each
    return m


def _given(net, B=3, seed=1):
    return torch.randint(net.codebook_size, (B, 4, 5, 3), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("groups", [1, 3, 7, 40])
def test_random_partition_is_balanced_and_covers_the_region(groups):
    region = _region(4, seed=groups).view(4, 20)
    part = random_partition(region, groups, generator=0)
    assert torch.equal(part >= 0, region)
    for b in range(4):
        sizes = torch.bincount(part[b][region[b]], minlength=groups)
        assert sizes.max() - sizes.min() <= 1 and sizes.sum() == region[b].sum()


def test_random_partition_is_uniform():
    counts = torch.zeros(6, 3)
    g = torch.Generator().manual_seed(0)
    for _ in range(600):
        part = random_partition(torch.ones(1, 6, dtype=torch.bool), 3, generator=g)[0]
        counts[torch.arange(6), part] += 1
    assert (counts - 200).abs().max() < 50  # each position lands in each group ~1/3 of the time


def _spy(net):
    """Record the hidden (masked) map of every spatial pass."""
    seen = []
    forward = net.spatial_forward

    def spatial_forward(codes, masked, class_labels=None):
        seen.append(masked.clone())
        return forward(codes, masked, class_labels)
    net.spatial_forward = spatial_forward
    return seen


@pytest.mark.parametrize("inpaint", [False, True])
def test_each_update_step_resamples_exactly_its_group(net, inpaint):
    B = 3
    region = _region(B) if inpaint else torch.ones(B, 4, 5, dtype=torch.bool)
    given = _given(net, B)
    seen = _spy(net)
    try:
        out, hist = draft_and_revise(net, given if inpaint else None, region if inpaint else None, batch_size=B,
                                     T_draft=6, T_revise=3, M=2, generator=0, return_history=True)
    finally:
        del net.spatial_forward
    assert [(s.phase, s.round, s.group) for s in hist] == \
        [("draft", 0, t) for t in range(6)] + [("revise", r, t) for r in (1, 2) for t in range(3)]
    assert len(seen) == len(hist)  # one spatial pass per step (no empty groups at this size)
    known = ~region
    prev = given if inpaint else None
    for phase_steps in (hist[:6], hist[6:9], hist[9:]):
        union = torch.zeros_like(region)
        for s in phase_steps:
            assert not (union & s.updated).any()  # groups are disjoint
            union |= s.updated
        assert torch.equal(union, region)  # ... and cover the region
        sizes = torch.stack([s.updated.sum((1, 2)) for s in phase_steps])
        assert (sizes.max(0).values - sizes.min(0).values).max() <= 1  # balanced
    for s, hidden in zip(hist, seen):
        assert torch.equal(hidden, ~known | s.updated)  # the group and the not-yet-drafted are [MASK]
        if prev is not None:
            changed = (s.codes != prev).any(-1)
            assert not (changed & ~s.updated).any()
        prev = s.codes
        known = known | s.updated
    assert torch.equal(out, hist[-1].codes)


@pytest.mark.parametrize("strategy", ["random", "top-c", "top-c-50"])
def test_inpainting_keeps_every_given_stack(net, strategy):
    region, given = _region(), _given(net)
    out, hist = draft_and_revise(net, given, region, class_labels=torch.tensor([0, 3, 4]), T_draft=4, M=2,
                                 strategy=strategy, revise_guidance=2.0, generator=3, return_history=True)
    for s in hist:
        assert torch.equal(s.codes[~region], given[~region])
        assert not (s.updated & ~region).any()
    assert ((out != given).any(-1) & region).any()  # something was generated


def test_top_c_reveals_the_most_confident_and_as_many_as_random(net):
    region = torch.ones(2, 4, 5, dtype=torch.bool)
    _, rand = draft_and_revise(net, batch_size=2, T_draft=5, M=0, generator=0, return_history=True)
    _, topc = draft_and_revise(net, batch_size=2, T_draft=5, M=0, strategy="top-c", generator=0,
                               return_history=True)
    for a, b in zip(rand, topc):
        assert torch.equal(a.updated.sum((1, 2)), b.updated.sum((1, 2)))
    assert torch.equal(sum(s.updated.int() for s in topc), region.int())


def test_same_seed_same_output_and_cache_equals_naive(net):
    kw = dict(batch_size=2, class_labels=torch.tensor([1, 2]), T_draft=5, M=1, revise_guidance=1.5)
    a = draft_and_revise(net, generator=7, **kw).tokens
    assert torch.equal(a, draft_and_revise(net, generator=7, **kw).tokens)
    assert torch.equal(a, draft_and_revise(net, generator=torch.Generator().manual_seed(7), **kw).tokens)
    assert not torch.equal(a, draft_and_revise(net, generator=8, **kw).tokens)
    assert torch.equal(a, draft_and_revise(net, generator=7, depth_cache=False, **kw).tokens)


def test_guidance_scale_zero_is_the_unconditional_model(net):
    kw = dict(batch_size=3, T_draft=4, M=1, generator=11)
    uncond = draft_and_revise(net, **kw).tokens  # no labels: the null class
    guided0 = draft_and_revise(net, class_labels=torch.tensor([0, 1, 2]), draft_guidance=0.0,
                               revise_guidance=0.0, **kw).tokens
    assert torch.equal(guided0, uncond)
    cond = draft_and_revise(net, class_labels=torch.tensor([0, 1, 2]), draft_guidance=1.0, revise_guidance=1.0,
                            **kw).tokens
    assert not torch.equal(cond, uncond)


def test_progress_bar_and_step_type(net, capsys):
    out, hist = draft_and_revise(net, batch_size=1, T_draft=2, M=1, T_revise=2, progress=True, generator=0,
                                 return_history=True)
    assert out.shape == (1, 4, 5, 3) and all(isinstance(s, Step) for s in hist)
    assert "draft-and-revise" in capsys.readouterr().err


def test_bad_arguments(net):
    with pytest.raises(ValueError, match="batch_size"):
        draft_and_revise(net)
    with pytest.raises(ValueError, match="T_draft"):
        draft_and_revise(net, batch_size=1, T_draft=0)
    with pytest.raises(ValueError, match="strategy"):
        draft_and_revise(net, batch_size=1, strategy="greedy")
    with pytest.raises(ValueError, match="revise_temperature"):
        draft_and_revise(net, batch_size=1, revise_temperature=0.0)
    with pytest.raises(ValueError, match="class_labels"):
        draft_and_revise(net, batch_size=2, class_labels=torch.tensor([1]))
    with pytest.raises(ValueError, match="mask"):
        draft_and_revise(net, _given(net))
    with pytest.raises(ValueError, match="codes must be"):
        draft_and_revise(net, _given(net)[..., :2], _region())
    with pytest.raises(ValueError, match="outside the mask"):
        draft_and_revise(net, _given(net) + 100, _region())



@pytest.mark.parametrize("kwargs, err, match", [
    (dict(draft_temperature=float("inf")), ValueError, "draft_temperature must be finite"),
    (dict(revise_temperature="0.8"), TypeError, "revise_temperature must be a real number"),
    (dict(draft_guidance=float("nan")), ValueError, "draft_guidance must be finite"),
    (dict(revise_guidance=None), TypeError, "revise_guidance must be a real number"),
])
def test_bad_temperatures_and_guidance(net, kwargs, err, match):
    """Named up front (a string was a bare '>' TypeError, inf or NaN an error naming another argument)."""
    with pytest.raises(err, match=match):
        draft_and_revise(net, batch_size=1, class_labels=torch.tensor([1]), T_draft=2, M=1, generator=0, **kwargs)

def test_bf16_autocast_and_top_k_top_p(net):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = draft_and_revise(net, batch_size=2, class_labels=torch.tensor([1, 2]), T_draft=3, M=1, top_k=5,
                               top_p=0.9, generator=0).tokens
    assert out.shape == (2, 4, 5, 3) and out.min() >= 0 and out.max() < net.codebook_size


def test_result_is_a_named_tuple_with_tokens_first(net):
    out = draft_and_revise(net, batch_size=2, T_draft=3, M=1, generator=0)
    assert isinstance(out, RQSample) and out._fields[0] == "tokens" and out.history is None
    region, given = _region(), _given(net)
    kept = draft_and_revise(net, known=given, mask=region, T_draft=3, M=1, generator=0).tokens
    assert torch.equal(kept[~region], given[~region])


def test_paper_settings_are_draft_and_revise_arguments(net):
    for name, settings in PAPER_SETTINGS.items():
        out = draft_and_revise(net, batch_size=1, class_labels=torch.tensor([2]), generator=0,
                               **{**settings, "T_draft": 4})
        assert out.tokens.shape == (1, *net.code_shape), name


def test_bad_known_mask_labels_and_batch(net):
    with pytest.raises(TypeError, match="known must be an int64"):
        draft_and_revise(net, _given(net).int(), _region())
    with pytest.raises(TypeError, match="mask must be a bool"):
        draft_and_revise(net, _given(net), _region().long())
    with pytest.raises(ValueError, match="mask must be"):
        draft_and_revise(net, _given(net), _region()[:, :2])
    with pytest.raises(ValueError, match=r"class_labels must lie in \[0, 5\]"):
        draft_and_revise(net, batch_size=2, class_labels=torch.tensor([1, 6]))
    with pytest.raises(ValueError, match="batch_size"):
        draft_and_revise(net, batch_size=0)


@pytest.mark.parametrize("backend", backend_params("cpu"))
def test_backends_draw_the_same_codes(net, backend):
    kw = dict(batch_size=2, class_labels=torch.tensor([1, 2]), T_draft=4, M=1, top_k=6, generator=3)
    ref = draft_and_revise(net, backend="reference", **kw).tokens
    assert torch.equal(draft_and_revise(net, backend=backend, **kw).tokens, ref)
