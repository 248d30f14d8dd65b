"""muse-maskgit-pytorch's token draw patched vs unpatched: the same tokens at temperature 0
(whole generate() runs included), the same distribution otherwise, reproducible from a seed."""
import importlib
import json
import sys
import types

import pytest
import torch

import vqfast.integrations as vi

NAME = "muse_maskgit_pytorch.gumbel_sample"


def _import_muse():
    """muse imports torchvision only for its VGG loss and data loading; where torchvision does not
    load against this torch build, an empty stand-in lets the sampler's module import."""
    pytest.importorskip("transformers")
    try:
        import torchvision  # noqa: F401
    except Exception:  # absent, or its C ops fail to load against this torch
        stub = types.ModuleType("torchvision")
        for sub in ("transforms", "datasets", "utils", "models"):
            mod = types.ModuleType(f"torchvision.{sub}")
            mod.__getattr__ = lambda name: None
            setattr(stub, sub, mod)
            sys.modules[f"torchvision.{sub}"] = mod
        sys.modules["torchvision"] = stub
    try:
        return importlib.import_module("muse_maskgit_pytorch")
    except ImportError as e:
        pytest.skip(f"muse-maskgit-pytorch not installed (pip install --no-deps muse-maskgit-pytorch==0.3.5): {e}")


@pytest.fixture(scope="module")
def muse():
    return _import_muse()


def _maskgit(muse, tmp_path, V=64, side=4, dim=32):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": dim}))
    torch.manual_seed(0)
    tf = muse.MaskGitTransformer(num_tokens=V, seq_len=side * side, dim=dim, depth=1, dim_head=16, heads=2,
                                 t5_name=str(tmp_path))
    tf.encode_text = lambda texts: torch.zeros(len(texts), 1, dim)  # no T5 weights: an empty prompt

    class TokensOnly(muse.VQGanVAE):  # generate() checks the VAE's type and decodes ids: return them
        def __init__(self):
            torch.nn.Module.__init__(self)
            self.codebook_size = V

        def copy_for_eval(self):
            return self

        def get_encoded_fmap_size(self, image_size):
            return image_size

        def decode_from_ids(self, ids):
            return ids

    return muse.MaskGit(image_size=side, transformer=tf, vae=TokensOnly()).eval()


def test_greedy_draw_matches(muse):
    m = sys.modules["muse_maskgit_pytorch.muse_maskgit_pytorch"]
    logits = torch.randn(2, 10, 50, generator=torch.Generator().manual_seed(0))
    filtered = m.top_k(logits, 0.9)
    ref = m.gumbel_sample(filtered, temperature=0.0)
    with vi.apply_to_muse_maskgit():
        got = m.gumbel_sample(filtered, temperature=0.0)
    assert torch.equal(got, ref)


def test_draw_distribution_and_seed(muse):
    """Draws from the top-k filtered logits follow softmax(logits / T) on the kept ids (each
    frequency within 5 sigma over 20000 draws), never a filtered id; one seed, one draw."""
    m = sys.modules["muse_maskgit_pytorch.muse_maskgit_pytorch"]
    logits = torch.linspace(-2, 2, 10).reshape(1, 1, 10)
    filtered = m.top_k(logits, 0.5)  # keeps the 5 largest
    probs = (filtered[0, 0] / 0.7).softmax(-1)
    with vi.apply_to_muse_maskgit():
        torch.manual_seed(0)
        draws = m.gumbel_sample(filtered.expand(1, 20000, 10), temperature=0.7)[0]
        torch.manual_seed(5)
        a = m.gumbel_sample(filtered.expand(1, 64, 10), temperature=0.7)
        torch.manual_seed(5)
        b = m.gumbel_sample(filtered.expand(1, 64, 10), temperature=0.7)
    counts = torch.bincount(draws, minlength=10).float()
    sigma = (20000 * probs * (1 - probs)).sqrt()
    assert bool(((counts - 20000 * probs).abs() <= 5 * sigma + 1e-6).all()), (counts, 20000 * probs)
    assert torch.equal(a, b)


def test_generate_under_patch(muse, tmp_path):
    """The peer's README usage (MaskGit.generate on text prompts): at temperature 0 the same ids
    as unpatched; sampled, valid ids and one served draw per step."""
    maskgit = _maskgit(muse, tmp_path)
    ref = maskgit.generate(texts=["a", "b"], temperature=0.0, timesteps=4, cond_scale=1.0)
    vi.reset_stats()
    with vi.apply_to_muse_maskgit():
        got = maskgit.generate(texts=["a", "b"], temperature=0.0, timesteps=4, cond_scale=1.0)
        sampled = maskgit.generate(texts=["a", "b"], temperature=1.0, timesteps=4, cond_scale=1.0)
    assert torch.equal(got, ref)
    assert vi.stats()[NAME] == {"served": 8, "passed_through": 0}
    assert sampled.shape == ref.shape and int(sampled.min()) >= 0 and int(sampled.max()) < 64
