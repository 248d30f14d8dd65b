"""diffusers patched vs unpatched: VQModel's VectorQuantizer (see embedding_quantizer_cases) and a
whole small VQModel; the aMUSEd scheduler step (same masking rule, same token distribution)."""
import pytest
import torch

import vqfast.integrations as vi
from tests.integrations import embedding_quantizer_cases as cases
from tests.integrations.parity import assert_close, leaf, twin

diffusers = pytest.importorskip("diffusers")
from diffusers.models.autoencoders.vae import VectorQuantizer  # noqa: E402

VQ_NAME, STEP_NAME = "diffusers.VectorQuantizer.forward", "diffusers.AmusedScheduler.step"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "fixed_beta"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_vector_quantizer_parity(dtype, legacy, train):
    cases.check_parity(VectorQuantizer, lambda: vi.apply_to_diffusers(amused_scheduler=False), VQ_NAME,
                       dtype, legacy, train)


def test_index_options(tmp_path):
    cases.check_index_options(VectorQuantizer, vi.apply_to_diffusers, tmp_path)


def test_vq_model_forward_parity():
    """The public VQModel: image -> (sample, commit_loss), gradients to the image and the codebook."""
    torch.manual_seed(0)
    peer, ours = twin(diffusers.VQModel(block_out_channels=(32,), layers_per_block=1, latent_channels=8,
                                        num_vq_embeddings=64, vq_embed_dim=8, norm_num_groups=8))
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    x_ref, x_got = leaf(x), leaf(x)
    ref = peer(x_ref)
    with vi.apply_to_diffusers():
        got = ours(x_got)
    assert_close(got.sample, ref.sample, torch.float32, "sample")
    assert_close(got.commit_loss, ref.commit_loss, torch.float32, "commit_loss")
    (ref.sample.square().mean() + ref.commit_loss).backward()
    (got.sample.square().mean() + got.commit_loss).backward()
    assert_close(x_got.grad, x_ref.grad, torch.float32, "grad to image")
    assert_close(ours.quantize.embedding.weight.grad, peer.quantize.embedding.weight.grad, torch.float32,
                 "grad to codebook")


def _scheduler(steps=4, temperature=(2.0, 0.01)):
    s = diffusers.AmusedScheduler(mask_token_id=63)
    s.set_timesteps(steps, temperature=temperature)
    return s


def _step(s, logits, sample, timestep, seed, patched):
    with (vi.apply_to_diffusers(vector_quantizer=False) if patched else torch.no_grad()):
        return s.step(logits, timestep, sample, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("two_dim", [False, True], ids=["seq", "image"])
def test_amused_step_masks_as_many_as_the_peer(two_dim):
    """Known tokens stay; each row re-masks the peer's count; with the confidence noise near 0 the
    re-masked positions are the least probable of their drawn tokens."""
    g = torch.Generator().manual_seed(0)
    B, L, V = 3, 16, 64
    logits = torch.randn(B, L, V, generator=g) * 3
    sample = torch.where(torch.rand(B, L, generator=g) < 0.7, 63, torch.randint(0, 63, (B, L), generator=g))
    s = _scheduler(temperature=(1e-6, 1e-6))
    t = int(s.timesteps[1])
    args = (logits.permute(0, 2, 1).reshape(B, V, 4, 4), sample.reshape(B, 4, 4)) if two_dim else (logits, sample)
    vi.reset_stats()
    ref = _step(s, *args, t, 0, patched=False)
    got = _step(s, *args, t, 0, patched=True)
    assert vi.stats()[STEP_NAME] == {"served": 1, "passed_through": 0}
    prev, pred = got.prev_sample.reshape(B, L), got.pred_original_sample.reshape(B, L)
    unknown = sample == 63
    assert torch.equal(pred[~unknown], sample[~unknown]) and torch.equal(prev[~unknown], sample[~unknown])
    assert torch.equal((prev == 63).sum(1), (ref.prev_sample.reshape(B, L) == 63).sum(1))
    p = logits.softmax(-1).gather(-1, pred[..., None])[..., 0].masked_fill(~unknown, 2.0)
    for b in range(B):
        n = int((prev[b] == 63).sum())
        assert set(p[b].argsort()[:n].tolist()) == set((prev[b] == 63).nonzero().squeeze(1).tolist())


def test_amused_step_token_distribution_and_seed():
    """Draws at an unknown position follow softmax(logits) (each frequency within 5 sigma over
    4000 steps); the same generator seed gives the same step."""
    V = 8
    logits = torch.linspace(-1, 1, V).repeat(1, 2, 1)  # [1, 2, V]
    probs = logits[0, 0].softmax(-1)
    sample = torch.full((1, 2), V - 1)
    s = diffusers.AmusedScheduler(mask_token_id=V - 1)
    s.set_timesteps(2)
    counts = torch.zeros(V)
    for seed in range(4000):
        tok = _step(s, logits, sample, 0, seed, patched=True).prev_sample[0, 0]
        counts[tok] += 1
    sigma = (4000 * probs * (1 - probs)).sqrt()
    assert bool(((counts - 4000 * probs).abs() <= 5 * sigma).all()), (counts, 4000 * probs)
    a, b = (_step(s, logits, sample, int(s.timesteps[0]), 7, patched=True) for _ in range(2))
    assert torch.equal(a.prev_sample, b.prev_sample) and torch.equal(a.pred_original_sample, b.pred_original_sample)
