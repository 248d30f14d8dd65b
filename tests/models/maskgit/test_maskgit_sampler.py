"""maskgit_decode: reveal counts follow the schedule exactly, known tokens never change,
same seed -> same tokens, sweet-spot stop, guidance, backends agree."""
import pytest
import torch

from tests.conftest import backend_params
from vqfast.data import make_masks
from vqfast.models.common.masking import SCHEDULES, mask_ratio
from vqfast.models.maskgit.transformer import BidirectionalTransformer
from vqfast.models.maskgit.sampler import MaskGITSample, maskgit_decode, reveal_schedule

K, H, W = 24, 4, 5
L = H * W


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return BidirectionalTransformer(K, L, dim=32, depth=2, heads=4, num_classes=3).eval()


def batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(K, (n, H, W), generator=g)
    kinds = ["box", "outside", "strokes", "half"]
    mask = torch.cat([make_masks(kinds[i % 4], 1, H, W, seed + i) for i in range(n)])
    return tokens, mask


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("steps", [1, 3, 8])
def test_reveal_schedule_formula(schedule, steps):
    n0 = torch.tensor([0, 1, 2, 5, 20, 256])
    plan = reveal_schedule(n0, steps, schedule)
    assert plan.shape == (steps, 6) and torch.equal(plan.sum(0), n0)
    for b, n in enumerate(n0.tolist()):
        left = n
        for t in range(steps):
            r = (t + 1) / steps
            target = int(torch.floor(n * mask_ratio(schedule, torch.tensor(r, dtype=torch.float64), n)))
            remaining = 0 if t == steps - 1 else min(target, max(left - 1, 0))
            assert plan[t, b] == left - remaining, (schedule, steps, n, t)
            assert left == 0 or plan[t, b] >= 1
            left = remaining


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_revealed_per_step_follows_schedule(net, schedule):
    tokens, mask = batch()
    out, hist = maskgit_decode(net, tokens, mask, steps=5, schedule=schedule, generator=3, return_history=True)
    counts = hist.sum(-1)  # [steps + 1, B] still masked
    plan = reveal_schedule(mask.flatten(1).sum(1), 5, schedule)
    assert torch.equal(counts[:-1] - counts[1:], plan)
    assert (counts[-1] == 0).all()
    # positions are only ever revealed, never re-masked
    assert (hist[1:] <= hist[:-1]).all()


@pytest.mark.parametrize("choice", ["argmax", "sample"])
def test_known_tokens_never_change(net, choice):
    tokens, mask = batch(8, seed=4)
    out = maskgit_decode(net, tokens, mask, steps=4, choice=choice, generator=0).tokens
    assert out.shape == tokens.shape and out.dtype == torch.long
    assert torch.equal(out[~mask], tokens[~mask])
    assert ((out >= 0) & (out < K)).all()


def test_deterministic_from_seed(net):
    tokens, mask = batch()
    a = maskgit_decode(net, tokens, mask, steps=4, choice="sample", generator=7).tokens
    b = maskgit_decode(net, tokens, mask, steps=4, choice="sample", generator=torch.Generator().manual_seed(7)).tokens
    c = maskgit_decode(net, tokens, mask, steps=4, choice="sample", generator=8).tokens
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_masked_values_are_ignored(net):
    tokens, mask = batch()
    other = tokens.masked_fill(mask, 0)
    assert torch.equal(maskgit_decode(net, tokens, mask, steps=3, generator=1).tokens,
                       maskgit_decode(net, other, mask, steps=3, generator=1).tokens)


def test_sweet_spot_stops_early_and_fills(net):
    tokens, mask = batch()
    out, hist = maskgit_decode(net, tokens, mask, steps=8, sweet_spot=3, generator=0, return_history=True)
    assert hist.shape[0] == 4 and (hist[-1].sum() == 0)
    plan = reveal_schedule(mask.flatten(1).sum(1), 8, "cosine")
    assert torch.equal(hist[0].sum(-1) - hist[2].sum(-1), plan[:2].sum(0))
    assert torch.equal(out[~mask], tokens[~mask])


def test_generate_from_scratch_and_guidance(net):
    out = maskgit_decode(net, batch_size=3, steps=4, generator=0).tokens
    assert out.shape == (3, L) and ((out >= 0) & (out < K)).all()
    labels = torch.tensor([0, 1, 2])
    cond = maskgit_decode(net, batch_size=3, steps=4, generator=0, class_labels=labels).tokens
    same = maskgit_decode(net, batch_size=3, steps=4, generator=0, class_labels=labels, guidance_scale=1.0).tokens
    guided = maskgit_decode(net, batch_size=3, steps=4, generator=0, class_labels=labels, guidance_scale=3.0).tokens
    assert torch.equal(cond, same) and guided.shape == (3, L)


@pytest.mark.parametrize("backend", backend_params("cpu"))
def test_fused_equals_reference(net, backend):
    tokens, mask = batch(6, seed=9)
    for choice in ("argmax", "sample"):
        ref = maskgit_decode(net, tokens, mask, steps=4, choice=choice, generator=5, backend="reference").tokens
        fast = maskgit_decode(net, tokens, mask, steps=4, choice=choice, generator=5, backend=backend).tokens
        assert torch.equal(ref, fast), choice


def test_bad_arguments(net):
    tokens, mask = batch()
    with pytest.raises(ValueError, match="mask shape"):
        maskgit_decode(net, tokens, mask[:, :2])
    with pytest.raises(ValueError, match="choice"):
        maskgit_decode(net, tokens, mask, choice="greedy")
    with pytest.raises(ValueError, match="sweet_spot"):
        maskgit_decode(net, tokens, mask, steps=4, sweet_spot=5)
    with pytest.raises(TypeError, match="mask must be a bool"):
        maskgit_decode(net, tokens, mask.long())
    with pytest.raises(ValueError, match="without mask"):
        maskgit_decode(net, tokens)
    with pytest.raises(ValueError, match="seq_len"):
        maskgit_decode(net, tokens[:, :2], mask[:, :2])



@pytest.mark.parametrize("kwargs, err, match", [
    (dict(choice="sample", sample_temperature=-1.0), ValueError, "sample_temperature must be > 0"),
    (dict(choice="sample", sample_temperature=0.0), ValueError, "sample_temperature must be > 0"),
    (dict(choice_temperature=-1.0), ValueError, "choice_temperature must be >= 0"),
    (dict(choice_temperature=float("nan")), ValueError, "choice_temperature must be finite"),
    (dict(guidance_scale="2"), TypeError, "guidance_scale must be a real number"),
])
def test_bad_temperatures_and_guidance(net, kwargs, err, match):
    """Named errors up front (a negative sample_temperature flipped the distribution silently; the others
    failed inside the loop naming `logits` or the annealed `temperature`)."""
    tokens, mask = batch()
    with pytest.raises(err, match=match):
        maskgit_decode(net, tokens, mask, steps=2, generator=0, **kwargs)

def test_bf16_autocast_path(net):
    tokens, mask = batch()
    out = maskgit_decode(net, tokens, mask, steps=3, generator=0, autocast_dtype=torch.bfloat16).tokens
    assert out.dtype == torch.long and torch.equal(out[~mask], tokens[~mask])


def test_result_is_a_named_tuple_with_tokens_first(net):
    tokens, mask = batch()
    out = maskgit_decode(net, known=tokens, mask=mask, steps=3, generator=1)
    assert isinstance(out, MaskGITSample) and out._fields[0] == "tokens" and out.history is None
    with_history = maskgit_decode(net, tokens, mask, steps=3, generator=1, return_history=True)
    assert torch.equal(with_history.tokens, out.tokens) and with_history.history.shape == (4, len(tokens), L)


def test_bad_known_labels_and_batch(net):
    tokens, mask = batch()
    with pytest.raises(ValueError, match="outside the mask"):
        maskgit_decode(net, tokens.masked_fill(~mask, K), mask)
    with pytest.raises(TypeError, match="known must be an int64"):
        maskgit_decode(net, tokens.int(), mask)
    with pytest.raises(ValueError, match=r"class_labels must lie in \[0, 3\]"):
        maskgit_decode(net, batch_size=2, class_labels=torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="batch_size"):
        maskgit_decode(net, batch_size=0)


def test_mask_alone_generates_its_region(net):
    _, mask = batch()
    out = maskgit_decode(net, mask=mask, steps=3, generator=2).tokens
    assert out.shape == mask.shape and ((out >= 0) & (out < K)).all()
    with pytest.raises(ValueError, match="batch_size"):
        maskgit_decode(net, mask=mask, batch_size=len(mask) + 1)
