"""Bad input above the ops: models, samplers, checkpoints and converters answer with a
ValueError / TypeError naming the argument, never a crash, a hang or a silent result.

One row per case: (id, call, expected exception, a pattern the message must contain). Add a
row for every new check. The op layer's own table is tests/ops/test_bad_inputs.py; the
trainer's command-line cases are in tests/train/.
"""
import io
import pickle
import tarfile

import pytest
import torch

from vqfast import checkpoint
from vqfast.convert import convert
from vqfast.models.common.vqgan import VQGAN
from vqfast.models.maskgit import BidirectionalTransformer, maskgit_decode
from vqfast.models.mqvae import MQVAE, Stackformer, stackformer_sample
from vqfast.models.put import PVQVAE, UQTransformer, put_sample
from vqfast.models.rq import RQVAE, ContextualRQTransformer, draft_and_revise
from vqfast.models.vqddm import VQDDM, vqddm_sample

_CACHE = {}


def tiny(cls, name="tiny"):
    """One eval-mode instance per (class, preset) for the whole table."""
    if (cls, name) not in _CACHE:
        _CACHE[cls, name] = cls.from_preset(name).eval()
    return _CACHE[cls, name]


def img(b=2, r=32):
    return torch.rand(b, 3, r, r) * 2 - 1


def nan_img():
    x = img()
    x[0, 0, 0, 0] = float("nan")
    return x


def saved_vqgan(tmp_path):
    checkpoint.save(tiny(VQGAN), tmp_path / "vq")
    return tmp_path / "vq"


def damaged(tmp_path, name):
    """A weights file of the suffix `name` gives, cut short (a broken download)."""
    checkpoint.save(tiny(VQGAN), tmp_path / "vq")
    data = (tmp_path / "vq.safetensors").read_bytes()
    if name.endswith(".tar.gz"):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            info = tarfile.TarInfo("ckpts/last.safetensors")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        data = buf.getvalue()
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    return tmp_path / name


def pickled(tmp_path, name):
    """A plain pickle (not torch.save's zip archive) of a state dict."""
    (tmp_path / name).write_bytes(pickle.dumps({"quantize.embedding.weight": [[0.0]]}))
    return tmp_path / name


CASES = [
    # presets
    ("unknown preset", lambda p: VQGAN.from_preset("f32-huge"), ValueError, "unknown VQGAN preset"),
    ("preset dtype", lambda p: VQGAN.from_preset("tiny", dtype=torch.int64), TypeError, "dtype"),
    ("negative resolution", lambda p: VQGAN.from_preset("tiny", resolution=-32), ValueError, "resolution must be >= 1"),
    ("string resolution", lambda p: RQVAE.from_preset("tiny", resolution="32"), TypeError, "resolution must be an int"),
    ("empty ch_mult", lambda p: VQGAN.from_preset("tiny", ch_mult=()), TypeError, "ch_mult must be a non-empty list"),
    ("zero width", lambda p: MQVAE.from_preset("tiny", ch=0), ValueError, "ch must be >= 1"),
    ("negative res blocks", lambda p: RQVAE.from_preset("tiny", num_res_blocks=-1), ValueError, "num_res_blocks"),
    ("zero heads", lambda p: UQTransformer.from_preset("tiny", heads=0), ValueError, "heads must be a positive int"),
    ("negative depth", lambda p: UQTransformer.from_preset("tiny", depth=-1), ValueError, "depth must be a positive"),
    ("negative mlp_ratio", lambda p: BidirectionalTransformer.from_preset("tiny", mlp_ratio=-1.0), ValueError,
     "mlp_ratio"),
    ("RQ grid of one side", lambda p: ContextualRQTransformer.from_preset("tiny", grid=[8]), ValueError,
     r"grid must be a pair \(H, W\)"),
    ("VQ-DDM empty ch_mult", lambda p: VQDDM.from_preset("tiny", ch_mult=[]), TypeError, "ch_mult"),
    ("PUT zero hidden", lambda p: PVQVAE.from_preset("tiny", hidden=0), ValueError, "hidden must be >= 1"),
    # tokenizers
    ("image size", lambda p: tiny(VQGAN).encode(img(r=24)), ValueError, "images must be"),
    ("image channels", lambda p: tiny(VQGAN).encode(torch.rand(2, 1, 32, 32)), ValueError, "images must be"),
    ("token ids >= vocabulary", lambda p: tiny(VQGAN).decode_tokens(torch.full((1, 8, 8), 256)), ValueError,
     "tokens must lie"),
    ("token dtype", lambda p: tiny(VQGAN).decode_tokens(torch.zeros(1, 8, 8)), ValueError, "tokens must be int64"),
    ("token grid transposed", lambda p: tiny(VQGAN).decode_tokens(torch.zeros(1, 4, 16, dtype=torch.long)), ValueError,
     r"tokens must be int64 \[B >= 1, 8, 8\]"),
    ("empty token batch (VQGAN)", lambda p: tiny(VQGAN).decode_tokens(torch.zeros(0, 8, 8, dtype=torch.long)),
     ValueError, "B >= 1"),
    ("empty token batch (MQ-VAE)", lambda p: tiny(MQVAE).decode_tokens(torch.zeros(0, 4, dtype=torch.long),
                                                                      torch.zeros(0, 4, dtype=torch.long)),
     ValueError, "B >= 1"),
    ("rq codes shape", lambda p: tiny(RQVAE).decode_tokens(torch.zeros(1, 8, 8, 2, dtype=torch.long)), ValueError,
     "tokens must be"),
    ("NaN images (MQ-VAE)", lambda p: tiny(MQVAE).encode(nan_img()), ValueError, "images"),
    ("NaN images (VQGAN)", lambda p: tiny(VQGAN).encode(nan_img()), ValueError, "images must be finite"),
    ("empty batch (VQGAN)", lambda p: tiny(VQGAN).encode(img(b=0)), ValueError, "B >= 1"),
    ("int images (RQ-VAE)", lambda p: tiny(RQVAE).encode(img().long()), ValueError, "images must be a float tensor"),
    ("bf16 images, fp32 weights (VQGAN)", lambda p: tiny(VQGAN).encode(img().bfloat16()), TypeError,
     "images are torch.bfloat16 but the model's weights are torch.float32"),
    ("fp64 images, fp32 weights (RQ-VAE)", lambda p: tiny(RQVAE)(img().double()), TypeError,
     "images are torch.float64"),
    ("bf16 images, fp32 weights (MQ-VAE)", lambda p: tiny(MQVAE).encode(img().bfloat16()), TypeError,
     "images are torch.bfloat16"),
    ("bf16 images, fp32 weights (PUT)", lambda p: put_sample(tiny(PVQVAE), tiny(UQTransformer), img().bfloat16(),
                                                             torch.ones(2, 32, 32, dtype=torch.bool)), TypeError,
     "images are torch.bfloat16"),
    ("empty batch (MQ-VAE)", lambda p: tiny(MQVAE).encode(img(b=0)), ValueError, "images"),
    ("PUT mask shape", lambda p: tiny(PVQVAE).encode(img(), torch.zeros(2, 16, 16, dtype=torch.bool)), ValueError,
     "mask"),
    ("PUT mask dtype", lambda p: tiny(PVQVAE).encode(img(), torch.zeros(2, 32, 32)), (ValueError, TypeError), "mask"),
    # token models
    ("MaskGIT token ids", lambda p: tiny(BidirectionalTransformer).loss(torch.full((2, 64), 300)), ValueError, "tokens"),
    ("MaskGIT forward token ids", lambda p: tiny(BidirectionalTransformer)(torch.full((2, 64), 300)), ValueError,
     r"tokens must lie in \[0, 256\]"),
    ("MaskGIT forward token dtype", lambda p: tiny(BidirectionalTransformer)(torch.zeros(2, 64)), TypeError,
     "tokens must be an int64 tensor"),
    ("UQ-Transformer integer features", lambda p: tiny(UQTransformer)(torch.zeros(1, 64, 64, dtype=torch.long)),
     TypeError, "features must be a float tensor"),
    ("MaskGIT labels without classes", lambda p: tiny(BidirectionalTransformer).loss(
        torch.zeros(2, 64, dtype=torch.long), class_labels=torch.tensor([0, 1])), ValueError, "class"),
    ("RQ labels out of range", lambda p: tiny(ContextualRQTransformer, "tiny-cond").loss(
        torch.zeros(2, *tiny(ContextualRQTransformer, "tiny-cond").code_shape, dtype=torch.long),
        class_labels=torch.tensor([0, 10 ** 6])), ValueError, "class_labels"),
    ("Stackformer positions", lambda p: tiny(Stackformer, "tiny-cond").loss(
        torch.zeros(2, 4, dtype=torch.long), torch.full((2, 4), 10 ** 6), class_labels=torch.tensor([0, 1])),
     ValueError, "positions"),
    ("VQ-DDM token ids", lambda p: tiny(VQDDM).loss(torch.full((2, *tiny(VQDDM).token_hw), 10 ** 6)), ValueError,
     "tokens"),
    # samplers
    ("MaskGIT mask dtype", lambda p: maskgit_decode(tiny(BidirectionalTransformer), torch.zeros(2, 64, dtype=torch.long),
                                                    torch.zeros(2, 64), steps=2), (ValueError, TypeError), "mask"),
    ("MaskGIT mask shape", lambda p: maskgit_decode(tiny(BidirectionalTransformer), torch.zeros(2, 64, dtype=torch.long),
                                                    torch.zeros(2, 63, dtype=torch.bool), steps=2), ValueError, "mask"),
    ("MaskGIT batch_size", lambda p: maskgit_decode(tiny(BidirectionalTransformer), batch_size=0, steps=2), ValueError,
     "batch_size"),
    ("MaskGIT autocast_dtype", lambda p: maskgit_decode(tiny(BidirectionalTransformer), batch_size=1, steps=2,
                                                       autocast_dtype=torch.int32), TypeError, "autocast_dtype"),
    ("Stackformer autocast_dtype", lambda p: stackformer_sample(tiny(Stackformer), batch_size=1,
                                                               autocast_dtype=torch.float64), TypeError,
     "autocast_dtype"),
    ("PUT autocast_dtype", lambda p: put_sample(tiny(PVQVAE), tiny(UQTransformer), img(),
                                                torch.ones(2, 32, 32, dtype=torch.bool), autocast_dtype="bf16"),
     TypeError, "autocast_dtype"),
    ("bf16 model, fp32 sampling", lambda p: maskgit_decode(BidirectionalTransformer.from_preset(
        "tiny", dtype=torch.bfloat16).eval(), batch_size=1, steps=2, autocast_dtype=torch.float32), TypeError,
     "samples in its own dtype"),
    ("generator type", lambda p: maskgit_decode(tiny(BidirectionalTransformer), batch_size=1, steps=2, generator="0"),
     TypeError, "generator"),
    ("RQ known + mask shapes", lambda p: draft_and_revise(
        tiny(ContextualRQTransformer), torch.zeros(1, 8, 8, 4, dtype=torch.long), torch.zeros(1, 4, 4, dtype=torch.bool),
        T_draft=2, M=1), ValueError, "mask"),
    ("MaskGIT batch_size vs known", lambda p: maskgit_decode(
        tiny(BidirectionalTransformer), torch.zeros(1, 64, dtype=torch.long), torch.ones(1, 64, dtype=torch.bool),
        batch_size=3, steps=2), ValueError, "batch_size=3 disagrees with known's batch 1"),
    ("RQ batch_size vs known", lambda p: draft_and_revise(
        tiny(ContextualRQTransformer), torch.zeros(1, 8, 8, 4, dtype=torch.long), torch.ones(1, 8, 8, dtype=torch.bool),
        batch_size=2, T_draft=2, M=1), ValueError, "batch_size=2 disagrees with known's batch 1"),
    ("Stackformer batch_size", lambda p: stackformer_sample(tiny(Stackformer, "tiny-cond"), batch_size=0),
     ValueError, "batch_size"),
    ("VQ-DDM known without mask", lambda p: vqddm_sample(tiny(VQDDM), known=torch.zeros(1, *tiny(VQDDM).token_hw,
                                                                                       dtype=torch.long), steps=2),
     ValueError, "mask"),
    ("PUT image / mask batch", lambda p: put_sample(tiny(PVQVAE), tiny(UQTransformer), img(),
                                                    torch.zeros(3, 32, 32, dtype=torch.bool)), ValueError, "mask"),
    # checkpoints
    ("checkpoint of another family", lambda p: checkpoint.load(saved_vqgan(p), expected=RQVAE), ValueError,
     "holds a vqfast.models.common.vqgan.VQGAN"),
    ("missing checkpoint", lambda p: checkpoint.load(p / "nothing"), FileNotFoundError, "no checkpoint"),
    # converters
    ("converter system", lambda p: convert("vqgan2", p / "x.ckpt", p / "out"), ValueError, "system must be one of"),
    ("converter file type", lambda p: (p / "w.txt").write_text("x") and convert("taming-vqgan", p / "w.txt", p / "o"),
     ValueError, "expected one of"),
    ("converter 1-D codebook", lambda p: (torch.save({"quantize.embedding.weight": torch.zeros(8)}, p / "w.pt"),
                                          convert("taming-vqgan", p / "w.pt", p / "o")), ValueError,
     r"quantize\.embedding\.weight must be a 2-D \[rows, dim\] tensor"),
    ("converter truncated safetensors", lambda p: convert("taming-vqgan", damaged(p, "w.safetensors"), p / "o"),
     ValueError, "not a readable safetensors file"),
    ("converter damaged tar.gz", lambda p: convert("taming-vqgan", damaged(p, "w.tar.gz"), p / "o"), ValueError,
     "not a readable tar archive"),
    ("converter plain pickle", lambda p: convert("taming-vqgan", pickled(p, "w.ckpt"), p / "o"), ValueError,
     "not a checkpoint written by torch.save"),
]


@pytest.mark.parametrize("call, exc, pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_a_named_error(tmp_path, call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call(tmp_path)
