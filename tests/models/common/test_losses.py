"""Shared loss blocks: VGG-16/19 features from torchvision-layout files, the LPIPS-style distance,
the PatchGAN discriminator in its two forms (taming's BatchNorm, EdgeConnect's spectral norm), hinge."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from vqfast.models.common.losses import HingeGAN, PatchDiscriminator, VGGFeatures, VGGPerceptual, read_state_dict

# torchvision's `cfgs["D"]` (vgg16) and `cfgs["E"]` (vgg19).
TORCHVISION_CFG = {
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
# `features` indices of the ReLUs the losses use, as LPIPS (vgg16 slices) and PUT's official code (vgg19) cut them.
TORCHVISION_RELU = {
    16: {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22, "relu5_3": 29},
    19: {"relu1_1": 1, "relu2_1": 6, "relu2_2": 8, "relu3_1": 11, "relu3_4": 17, "relu4_1": 20, "relu4_4": 26,
         "relu5_1": 29, "relu5_2": 31},
}
MEAN, STD = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def torchvision_features(depth: int, seed: int = 0) -> nn.Sequential:
    """torchvision's make_layers (no batch norm), randomly initialized."""
    torch.manual_seed(seed)
    layers, c = [], 3
    for v in TORCHVISION_CFG[depth]:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
            c = v
    return nn.Sequential(*layers)


def save_vgg(path, features: nn.Sequential, extra=None):
    state = {f"features.{k}": v.contiguous() for k, v in features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(4, 3)  # a full torchvision file also has the classifier
    state.update(extra or {})
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save_file
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def images(seed, n=2, size=32):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("depth", [16, 19])
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_vgg_features_match_the_torchvision_layout(tmp_path, depth, suffix):
    ref = torchvision_features(depth).eval()
    vgg = VGGFeatures.from_file(save_vgg(tmp_path / f"vgg{suffix}", ref), depth=depth)
    x = images(0)
    names = tuple(TORCHVISION_RELU[depth])
    got = vgg(x, names)
    h = ((x + 1) / 2 - MEAN) / STD
    with torch.no_grad():
        for name, i in TORCHVISION_RELU[depth].items():
            torch.testing.assert_close(got[name], ref[:i + 1](h.clone()), rtol=0, atol=0)
    assert not any(p.requires_grad for p in vgg.parameters())


def test_vgg_features_reject_bad_files_and_names(tmp_path):
    with pytest.raises(FileNotFoundError, match="no weights file"):
        VGGFeatures.from_file(tmp_path / "missing.pth")
    vgg16 = save_vgg(tmp_path / "vgg16.safetensors", torchvision_features(16))
    with pytest.raises(ValueError, match="not a torchvision VGG-19 state dict"):
        VGGFeatures.from_file(vgg16, depth=19)
    with pytest.raises(ValueError, match="depth must be 16 or 19"):
        VGGFeatures(11)
    with pytest.raises(ValueError, match="names must be layer names of VGG-16"):
        VGGFeatures(16)(images(0), ("relu3_4",))
    with pytest.raises(ValueError, match="names must be layer names"):
        VGGFeatures(16)(images(0), ())


def test_vgg_perceptual_is_lpips_on_the_file_weights(tmp_path):
    ref = torchvision_features(16).eval()
    g = torch.Generator().manual_seed(1)
    widths = (64, 128, 256, 512, 512)
    lin = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for k, c in enumerate(widths)}
    net = VGGPerceptual.from_file(save_vgg(tmp_path / "lpips.safetensors", ref, lin))
    x, y = images(2), images(3)
    with torch.no_grad():
        hx, hy = (((t + 1) / 2 - MEAN) / STD for t in (x, y))
        expected = torch.zeros(())
        for k, i in enumerate(TORCHVISION_RELU[16].values()):
            a, b = (F.normalize(ref[:i + 1](h.clone()), dim=1, eps=1e-10) for h in (hx, hy))
            expected = expected + ((a - b) ** 2 * lin[f"lin{k}.model.1.weight"].view(1, -1, 1, 1)).sum(1).mean()
        torch.testing.assert_close(net(x, y), expected)
        assert float(net(x, x)) == 0.0
    with pytest.raises(ValueError, match="not a torchvision VGG-16 state dict"):
        VGGPerceptual.from_file(save_vgg(tmp_path / "vgg19.pth", torchvision_features(19)))


def _conv_out(n: int, stride: int) -> int:
    return (n + 2 * 1 - 4) // stride + 1


@pytest.mark.parametrize("norm", ["batch", "spectral"])
def test_patch_discriminator_layouts(norm):
    d = PatchDiscriminator(channels=8, depth=3, norm=norm)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [tuple(c.weight.shape) for c in convs] == [(8, 3, 4, 4), (16, 8, 4, 4), (32, 16, 4, 4), (64, 32, 4, 4),
                                                      (1, 64, 4, 4)]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 1, 1]
    bns = [m for m in d.modules() if isinstance(m, nn.BatchNorm2d)]
    if norm == "batch":  # taming's NLayerDiscriminator: BatchNorm after the inner convs, which have no bias
        assert len(bns) == 3 and [c.bias is None for c in convs] == [False, True, True, True, False]
    else:  # EdgeConnect's: every conv spectral-normalized, biases kept, no BatchNorm
        assert not bns and all(hasattr(c, "weight_orig") and c.bias is not None for c in convs)
    n = 64
    for s in (2, 2, 2, 1, 1):
        n = _conv_out(n, s)
    assert d(images(0, size=64)).shape == (2, 1, n, n)


def test_patch_discriminator_options():
    assert sum(isinstance(m, nn.Conv2d) for m in PatchDiscriminator(depth=5).modules()) == 7
    assert PatchDiscriminator(in_channels=1, channels=4)(torch.zeros(1, 1, 32, 32)).shape[1] == 1
    with pytest.raises(ValueError, match="norm must be 'batch' or 'spectral'"):
        PatchDiscriminator(norm="instance")
    with pytest.raises(ValueError, match="depth must be a positive int"):
        PatchDiscriminator(depth=0)


def test_hinge_gan_terms():
    torch.manual_seed(0)
    gan = HingeGAN(PatchDiscriminator(channels=4), weight=0.5)
    real, fake = images(0), images(1).requires_grad_(True)
    g = gan.generator_loss(fake)
    torch.testing.assert_close(g, -0.5 * gan.discriminator(fake).mean())
    g.backward()
    assert fake.grad is not None
    fake.grad = None
    d = gan.discriminator_loss(real, fake)
    d.backward()
    assert fake.grad is None and d >= 0


@pytest.mark.parametrize("name, data", [("vgg.pth", b"not a torch file"), ("vgg.safetensors", b"\x08" + b"\x00" * 7)])
def test_an_unreadable_weights_file_is_a_value_error(tmp_path, name, data):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(ValueError, match="is not a readable weights file"):
        read_state_dict(tmp_path / name)
