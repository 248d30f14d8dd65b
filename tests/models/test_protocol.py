"""All five families through one protocol: presets (tiny, and every paper preset on the meta
device), tokenizer encode / decode_tokens / forward, the token model's LossOutput, and each
sampler called with batch_size=2, generator=0 returning a NamedTuple reproducible from the seed."""
import pytest
import torch

from vqfast.models.common.outputs import LossOutput, TokenizerOutput
from vqfast.models.common.vqgan import VQGAN
from vqfast.models.maskgit import BidirectionalTransformer, maskgit_decode
from vqfast.models.mqvae import MQVAE, Stackformer, stackformer_sample
from vqfast.models.put import PVQVAE, UQTransformer, put_sample, uq_training_batch
from vqfast.models.rq import RQVAE, ContextualRQTransformer, draft_and_revise
from vqfast.models.vqddm import VQDDM, vqddm_sample

CLASSES = [VQGAN, BidirectionalTransformer, PVQVAE, UQTransformer, MQVAE, Stackformer, RQVAE,
           ContextualRQTransformer, VQDDM]
PRESETS = [(cls, name) for cls in CLASSES for name in getattr(cls, "PRESETS", ())]


def images(model, batch=2, seed=0):
    r = model.config["resolution"]
    return torch.rand(batch, 3, r, r, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def tokens_of(encoding):
    return encoding if isinstance(encoding, torch.Tensor) else encoding.tokens


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_class_has_a_tiny_preset_and_one_config(cls):
    m = cls.from_preset("tiny")
    assert isinstance(m.config, dict) and not hasattr(m, "cfg")
    for old in ("preset", "tiny", "paper", "seed_config"):
        assert not hasattr(cls, old), f"{cls.__name__}.{old} is replaced by from_preset"
    for old in ("n_layers", "n_heads", "d_model"):
        assert old not in m.config, f"{cls.__name__} config uses {old!r}: spell it dim / depth / heads"
    with pytest.raises(ValueError, match=rf"unknown {cls.__name__} preset 'nope'; choose one of"):
        cls.from_preset("nope")


@pytest.mark.parametrize("cls, name", PRESETS, ids=[f"{c.__name__}-{n}" for c, n in PRESETS])
def test_every_preset_builds_on_the_meta_device(cls, name):
    with torch.device("meta"):
        m = cls.from_preset(name)
    assert all(p.is_meta for p in m.parameters())
    m = cls.from_preset(name, device="meta", dtype=torch.bfloat16)
    assert all(p.is_meta and p.dtype == torch.bfloat16 for p in m.parameters())


@pytest.mark.parametrize("cls", [VQGAN, RQVAE, MQVAE, PVQVAE], ids=lambda c: c.__name__)
def test_tokenizers_take_images_of_their_weights_dtype_or_under_autocast(cls):
    x = images(cls.from_preset("tiny"), batch=1).bfloat16()
    extra = (torch.zeros(1, *x.shape[2:], dtype=torch.bool),) if cls is PVQVAE else ()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert tokens_of(cls.from_preset("tiny").eval().encode(x, *extra)).shape[0] == 1
    assert tokens_of(cls.from_preset("tiny", dtype=torch.bfloat16).eval().encode(x, *extra)).shape[0] == 1
    with pytest.raises(TypeError, match="images are torch.bfloat16 but the model's weights are torch.float32"):
        cls.from_preset("tiny").eval().encode(x, *extra)


def _bf16(cls, name="tiny"):
    return cls.from_preset(name, dtype=torch.bfloat16).eval()


BF16_RUNS = {
    "vqgan": lambda: (lambda vq: vq.decode_tokens(vq.encode(images(vq).bfloat16())))(_bf16(VQGAN)),
    "rqvae": lambda: _bf16(RQVAE).decode_tokens(torch.zeros(2, *_bf16(RQVAE).token_shape, dtype=torch.long)),
    "maskgit": lambda: maskgit_decode(_bf16(BidirectionalTransformer), batch_size=2, steps=2, generator=0).tokens,
    "stackformer": lambda: stackformer_sample(_bf16(Stackformer), batch_size=2, generator=0).tokens,
    "put": lambda: (lambda vae: put_sample(vae, _bf16(UQTransformer), images(vae).bfloat16(),
                                           torch.ones(2, 32, 32, dtype=torch.bool), generator=0).images)(_bf16(PVQVAE)),
    "vqddm": lambda: vqddm_sample(_bf16(VQDDM), batch_size=2, steps=2, generator=0).tokens,
}


@pytest.mark.parametrize("run", BF16_RUNS.values(), ids=BF16_RUNS.keys())
def test_models_cast_to_bf16_decode_and_sample(run):
    """from_preset(dtype=bf16) models run end to end: decode and every sampler (codebooks stay fp32)."""
    out = run()
    assert out.shape[0] == 2 and (out.dtype == torch.long or out.dtype == torch.bfloat16)


def check_tokenizer(tok, x, *extra):
    tok.eval()
    enc = tok.encode(x, *extra)
    toks = tokens_of(enc)
    assert toks.dtype == torch.long and toks.shape[0] == x.shape[0]
    again = tok.encode(x, *extra)
    assert torch.equal(tokens_of(again), toks)
    return enc


def check_forward(tok, x, *extra):
    tok.train()
    out = tok(x, *extra)
    assert isinstance(out, TokenizerOutput) and out.reconstruction.shape == x.shape
    check_loss(out.loss)
    tok.eval()


def check_loss(loss):
    assert isinstance(loss, LossOutput)
    assert loss.total.dim() == 0 and loss.total.requires_grad and torch.isfinite(loss.total)
    assert loss.terms and all(isinstance(v, torch.Tensor) and not v.requires_grad for v in loss.terms.values())


def check_sampler(run, decoded=False):
    a, b = run(), run()
    assert isinstance(a, tuple) and hasattr(a, "_fields") and a._fields[0] == "tokens"
    assert a.tokens.shape[0] == 2
    assert torch.equal(a.tokens, b.tokens), "same generator seed, different tokens"
    if decoded:
        assert a.images is not None and a.images.shape[0] == 2
    return a


def test_maskgit_protocol():
    tok = VQGAN.from_preset("tiny")
    x = images(tok)
    toks = check_tokenizer(tok, x)
    assert tok.decode_tokens(toks).shape == x.shape
    check_forward(tok, x)
    net = BidirectionalTransformer.from_preset("tiny")
    check_loss(net.loss(toks.flatten(1), generator=0))
    out = check_sampler(lambda: maskgit_decode(net.eval(), batch_size=2, steps=4, generator=0))
    assert out.tokens.shape == (2, net.seq_len)


def test_put_protocol():
    vae = PVQVAE.from_preset("tiny")
    x = images(vae)
    mask = torch.zeros(2, *x.shape[2:], dtype=torch.bool)
    mask[:, 8:24, 8:24] = True
    enc = check_tokenizer(vae, x, mask)
    assert vae.decode_tokens(enc.tokens, x, mask).shape == x.shape
    check_forward(vae, x, mask)
    net = UQTransformer.from_preset("tiny")
    check_loss(net.loss(uq_training_batch(vae, x, mask, generator=0)))
    out = check_sampler(lambda: put_sample(vae, net.eval(), x, mask, generator=0), decoded=True)
    assert out.images.shape[-3:] == x.shape[-3:]


def test_mqvae_protocol():
    mq = MQVAE.from_preset("tiny")
    x = images(mq)
    enc = check_tokenizer(mq, x)
    assert mq.decode_tokens(enc.tokens, enc.positions).shape == x.shape
    check_forward(mq, x)
    tf = Stackformer.from_preset("tiny-cond")
    labels = torch.tensor([0, 3])
    check_loss(tf.loss(enc.tokens, enc.positions, class_labels=labels, generator=0))
    out = check_sampler(lambda: stackformer_sample(tf.eval(), batch_size=2, num_tokens=mq.num_kept,
                                                   class_labels=labels, generator=0))
    assert out.positions.shape == out.tokens.shape


def test_rq_protocol():
    rq = RQVAE.from_preset("tiny")
    x = images(rq)
    toks = check_tokenizer(rq, x)
    assert toks.dim() == 4  # [B, h, w, D]
    assert rq.decode_tokens(toks).shape == x.shape
    check_forward(rq, x)
    net = ContextualRQTransformer.from_preset("tiny-cond")
    labels = torch.tensor([1, 2])
    codes = torch.randint(0, net.config["codebook_size"], (2, *net.code_shape), generator=torch.Generator().manual_seed(0))
    check_loss(net.loss(codes, class_labels=labels, generator=0))
    check_sampler(lambda: draft_and_revise(net.eval(), batch_size=2, class_labels=labels, T_draft=4, M=1,
                                           generator=0))


def test_vqddm_protocol():
    model = VQDDM.from_preset("tiny")
    K = model.config["codebook_size"]
    h, w = model.token_hw
    codes = torch.randint(0, K, (2, h, w), generator=torch.Generator().manual_seed(0))
    check_loss(model.loss(codes, generator=0))
    out = check_sampler(lambda: vqddm_sample(model.eval(), batch_size=2, steps=4, generator=0))
    assert out.tokens.shape == (2, h, w)
    missing = torch.zeros(2, h, w, dtype=torch.bool)
    missing[:, : h // 2] = True
    filled = vqddm_sample(model, known=out.tokens, mask=missing, steps=4, generator=1).tokens
    assert torch.equal(filled[~missing], out.tokens[~missing])
