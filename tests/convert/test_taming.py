"""taming-transformers VQGAN -> vqfast VQGAN: the original modules (taming-transformers-rom1504)
with random weights at f16 with attention at 16x16, saved as a Lightning checkpoint, converted,
then the same indices (vqfast's fused search against taming's own argmin) and the same
reconstruction within 1e-4; bad checkpoints are named errors."""
import io
import sys
import tarfile
import types

import pytest
import torch

from vqfast import checkpoint
from vqfast.__main__ import main
from vqfast.convert import convert, read_state
from vqfast.models.common.vqgan import VQGAN

model_py = pytest.importorskip("taming.modules.diffusionmodules.model", reason="pip install taming-transformers-rom1504")
quantize_py = pytest.importorskip("taming.modules.vqvae.quantize")

# f16 (four downsamplings) at a small width and 64x64 input, attention at 16x16, as the ImageNet VQGANs
CFG = dict(ch=32, out_ch=3, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=[16], in_channels=3,
           resolution=64, z_channels=32, double_z=False, dropout=0.0)
K, DIM = 64, 16


class TamingVQGAN(torch.nn.Module):
    """taming.models.vqgan.VQModel's modules and forward, without its Lightning shell."""

    def __init__(self):
        super().__init__()
        self.encoder, self.decoder = model_py.Encoder(**CFG), model_py.Decoder(**CFG)
        self.quantize = quantize_py.VectorQuantizer2(K, DIM, beta=0.25)
        self.quant_conv = torch.nn.Conv2d(CFG["z_channels"], DIM, 1)
        self.post_quant_conv = torch.nn.Conv2d(DIM, CFG["z_channels"], 1)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in self.parameters():  # random everything, GroupNorm affines included
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() > 1 else 0.2)
                        / max(1, p[0].numel()) ** 0.5 + (1.0 if p.dim() == 1 and p.shape[0] % 32 == 0 else 0.0))

    def forward(self, x):
        quant, _, (_, _, ind) = self.quantize(self.quant_conv(self.encoder(x)))
        return self.decoder(self.post_quant_conv(quant)), ind.view(x.shape[0], -1)


class ModelCheckpoint:  # stands for Lightning's callback, which checkpoints key their callback states by
    pass


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    net = TamingVQGAN().eval()
    fake = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")
    ModelCheckpoint.__module__ = fake.__name__
    fake.ModelCheckpoint = ModelCheckpoint
    sys.modules[fake.__name__] = fake
    try:
        state = {f"{k}": v for k, v in net.state_dict().items()}
        state["loss.discriminator.main.0.weight"] = torch.zeros(2)  # the GAN loss rides along in real checkpoints
        path = tmp_path_factory.mktemp("taming") / "last.ckpt"
        torch.save({"state_dict": state, "global_step": 7, "callbacks": {ModelCheckpoint: {"best_model_score": 1.0}}},
                   path)
    finally:
        del sys.modules[fake.__name__]
    return net, path


def test_converted_vqgan_matches_the_official_modules(official, tmp_path):
    net, path = official
    result = convert("taming-vqgan", path, tmp_path / "vq", resolution=64)
    assert result.skipped == ["loss.discriminator.main.0.weight"]
    vq = checkpoint.load(tmp_path / "vq", expected=VQGAN)
    assert vq.config["attn_resolutions"] == [16] and vq.token_hw == (4, 4)
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        rec_ref, idx_ref = net(x)
        tokens = vq.encode(x)
        rec = vq.decode_tokens(tokens)
        rec_fwd = vq(x).reconstruction
    assert torch.equal(tokens.flatten(1), idx_ref)
    scale = rec_ref.abs().max()
    assert (rec - rec_ref).abs().max() < 1e-4 * scale and (rec_fwd - rec_ref).abs().max() < 1e-4 * scale
    # in float64 the two decoders agree to rounding: the mapping is exact, the fp32 gap is summation order
    with torch.no_grad():
        net64, vq64 = net.double(), vq.double()
        ref64 = net64.decoder(net64.post_quant_conv(net64.quantize.embedding(idx_ref).view(3, 4, 4, DIM)
                                                    .permute(0, 3, 1, 2)))
        got64 = vq64.decode_tokens(tokens)
        net.float()
    assert (got64 - ref64).abs().max() < 1e-10 * scale


def test_cli_reads_a_tar_gz_release_in_place(official, tmp_path, capsys):
    _, path = official
    release = tmp_path / "vqgan_imagenet_f16.tar.gz"
    with tarfile.open(release, "w:gz") as tar:
        tar.add(path, arcname="vqgan_imagenet_f16/ckpts/last.ckpt")
    main(["convert", "taming-vqgan", str(release), str(tmp_path / "out"), "--resolution", "64"])
    assert "mapped" in capsys.readouterr().out
    assert checkpoint.load(tmp_path / "out").config["codebook_size"] == K


def test_mismatches_are_listed(official, tmp_path):
    _, path = official
    state = read_state(path)
    state.pop("decoder.conv_out.bias")
    state["encoder.extra.weight"] = torch.zeros(1)
    state["quant_conv.weight"] = torch.zeros(DIM, 5, 1, 1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ValueError) as err:
        convert("taming-vqgan", tmp_path / "bad.pt", tmp_path / "o", resolution=64)
    message = str(err.value)
    assert "decoder.conv_out.bias" in message and "encoder.extra.weight" in message and "quant_conv.weight" in message


class Payload:  # any class outside the allow-list: its code must never run at load
    pass


def test_code_in_a_checkpoint_is_refused(tmp_path):
    buf = io.BytesIO()
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": Payload()}, buf)
    (tmp_path / "evil.ckpt").write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match="outside the allow-list"):
        read_state(tmp_path / "evil.ckpt")


def test_bad_arguments(tmp_path, official):
    _, path = official
    with pytest.raises(ValueError, match="system must be one of"):
        convert("nope", path, tmp_path / "o")
    with pytest.raises(ValueError, match="resolution"):
        convert("taming-vqgan", path, tmp_path / "o", resolution=0)
    with pytest.raises(FileNotFoundError):
        convert("taming-vqgan", tmp_path / "missing.ckpt", tmp_path / "o")
