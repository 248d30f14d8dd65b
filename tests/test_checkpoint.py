"""vqfast.checkpoint: safetensors + JSON round trip, mismatches named, nothing unpickled."""
import json

import pytest
import torch

from vqfast import checkpoint
from vqfast.models.maskgit.transformer import BidirectionalTransformer
from vqfast.models.common.vqgan import VQGAN


def small_vq(**kw):
    return VQGAN(resolution=16, ch=16, ch_mult=(1, 2), codebook_size=32, embed_dim=8, **kw)


def test_round_trip_transformer(tmp_path):
    torch.manual_seed(0)
    net = BidirectionalTransformer(32, 16, dim=32, depth=2, heads=4, num_classes=2).eval()
    checkpoint.save(net, tmp_path / "net", extra={"note": "x"})
    back = checkpoint.load(tmp_path / "net", expected=BidirectionalTransformer)
    tok = torch.randint(33, (2, 16))
    assert torch.equal(net(tok), back(tok))
    rec = checkpoint.read_config(tmp_path / "net")
    assert rec["class"] == "vqfast.models.maskgit.transformer.BidirectionalTransformer"
    assert rec["config"]["num_classes"] == 2 and rec["extra"] == {"note": "x"} and "vqfast_version" in rec


def test_round_trip_vqgan_with_ema_state(tmp_path):
    torch.manual_seed(0)
    vq = small_vq().train()
    vq(torch.rand(4, 3, 16, 16) * 2 - 1)  # k-means init + one EMA update
    vq.eval()
    weights, meta = checkpoint.save(vq, tmp_path / "vq.safetensors")
    assert weights.name == "vq.safetensors" and meta.name == "vq.json"
    back = checkpoint.load(tmp_path / "vq")
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(vq.encode(x), back.encode(x))
    for (k, a), b in zip(vq.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_round_trip_keeps_a_low_precision_model_in_its_dtype(tmp_path, dtype):
    vq = VQGAN.from_preset("tiny", dtype=dtype).eval()
    checkpoint.save(vq, tmp_path / "vq")
    back = checkpoint.load(tmp_path / "vq")
    for (k, a), b in zip(vq.state_dict().items(), back.state_dict().values()):
        assert a.dtype == b.dtype and torch.equal(a, b), k  # the codebook's fp32 EMA state included
    x = (torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(dtype)
    assert torch.equal(vq.encode(x), back.encode(x))


def test_wrong_class_is_named(tmp_path):
    checkpoint.save(small_vq(), tmp_path / "vq")
    with pytest.raises(ValueError, match="holds a vqfast.models.common.vqgan.VQGAN, expected .*BidirectionalTransformer"):
        checkpoint.load(tmp_path / "vq", expected=BidirectionalTransformer)


def test_wrong_shape_is_named(tmp_path):
    checkpoint.save(small_vq(), tmp_path / "vq")
    with pytest.raises(ValueError, match=r"shape mismatch: quantizer\.codebook_state\.embed: checkpoint \(32, 8\) vs model \(64, 8\)"):
        checkpoint.load_state(VQGAN(resolution=16, ch=16, ch_mult=(1, 2), codebook_size=64, embed_dim=8),
                              tmp_path / "vq")


def test_wrong_kind_of_tensor_is_named(tmp_path):
    from safetensors.torch import save_file

    checkpoint.save(small_vq(), tmp_path / "vq")
    state = {k: v.clone() for k, v in small_vq().state_dict().items()}
    state["quantizer.codebook_state.initted"] = torch.tensor(0.5)  # a float where the model keeps a bool
    save_file(state, str(tmp_path / "vq.safetensors"))
    with pytest.raises(ValueError, match=r"dtype mismatch: quantizer\.codebook_state\.initted: checkpoint torch\.float"):
        checkpoint.load(tmp_path / "vq")


def test_missing_and_unexpected_keys_are_named(tmp_path):
    checkpoint.save(BidirectionalTransformer(8, 4, dim=16, depth=1, heads=2), tmp_path / "a")
    with pytest.raises(ValueError, match=r"missing from checkpoint: \['blocks\.1\."):
        checkpoint.load_state(BidirectionalTransformer(8, 4, dim=16, depth=2, heads=2), tmp_path / "a")
    checkpoint.save(BidirectionalTransformer(8, 4, dim=16, depth=2, heads=2), tmp_path / "b")
    with pytest.raises(ValueError, match=r"not in BidirectionalTransformer: \['blocks\.1\."):
        checkpoint.load_state(BidirectionalTransformer(8, 4, dim=16, depth=1, heads=2), tmp_path / "b")


def test_foreign_class_refused(tmp_path):
    checkpoint.save(BidirectionalTransformer(8, 4, dim=16, depth=1, heads=2), tmp_path / "a")
    meta = tmp_path / "a.json"
    rec = json.loads(meta.read_text())
    rec["class"] = "os.system"
    meta.write_text(json.dumps(rec))
    with pytest.raises(ValueError, match="only classes inside the vqfast package"):
        checkpoint.load(tmp_path / "a")
    for name in ("vqfast.checkpoint.save", "vqfast.no_such_module.Model", "vqfast.checkpoint.nn.Module"):
        rec["class"] = name
        meta.write_text(json.dumps(rec))
        with pytest.raises(ValueError, match="not an nn.Module"):
            checkpoint.load(tmp_path / "a")
    rec["class"] = 5
    meta.write_text(json.dumps(rec))
    with pytest.raises(ValueError, match="'class' must be a dotted class name string"):
        checkpoint.load(tmp_path / "a")


def test_load_arguments_are_checked(tmp_path):
    checkpoint.save(small_vq(), tmp_path / "vq")
    with pytest.raises(TypeError, match="expected must be a model class"):
        checkpoint.load(tmp_path / "vq", expected="VQGAN")
    with pytest.raises(ValueError, match="map_location must name a torch device"):
        checkpoint.load(tmp_path / "vq", map_location="gpu0")


def test_config_that_is_not_json_writes_nothing(tmp_path):
    with pytest.raises(TypeError, match="JSON values only"):
        checkpoint.save(small_vq(), tmp_path / "vq", config={"scale": torch.ones(1)})
    assert list(tmp_path.iterdir()) == []


def test_weights_file_is_safetensors(tmp_path):
    weights, _ = checkpoint.save(BidirectionalTransformer(8, 4, dim=16, depth=1, heads=2), tmp_path / "a")
    header_len = int.from_bytes(weights.read_bytes()[:8], "little")
    header = json.loads(weights.read_bytes()[8:8 + header_len])
    assert "tok_emb.weight" in header  # a safetensors JSON header, not a pickle


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        checkpoint.load(tmp_path / "nothing")


def test_model_without_config_needs_one(tmp_path):
    with pytest.raises(TypeError, match="config"):
        checkpoint.save(torch.nn.Linear(2, 2), tmp_path / "lin")
    with pytest.raises(TypeError, match="only models defined in vqfast can be saved"):
        checkpoint.save(torch.nn.Linear(2, 2), tmp_path / "lin", config={"in_features": 2, "out_features": 2})


def test_a_compiled_model_saves_the_model_inside(tmp_path):
    vq = small_vq().eval()
    checkpoint.save(torch.compile(vq), tmp_path / "vq")
    back = checkpoint.load(tmp_path / "vq", expected=VQGAN)
    assert all(torch.equal(a, b) for a, b in zip(vq.state_dict().values(), back.state_dict().values()))


@pytest.mark.parametrize("old", ["vqfast.models.vqgan.VQGAN"])
def test_checkpoint_saved_before_the_family_packages_loads(tmp_path, old):
    """The demo's cache stores module paths of the flat layout: they map to today's classes."""
    vq = VQGAN.from_preset("tiny").eval()
    checkpoint.save(vq, tmp_path / "old")
    meta = tmp_path / "old.json"
    record = json.loads(meta.read_text())
    record["class"] = old
    meta.write_text(json.dumps(record))
    back = checkpoint.load(tmp_path / "old", expected=VQGAN)
    assert type(back) is VQGAN
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert torch.equal(back.encode(x), vq.encode(x))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_weights_are_a_value_error(tmp_path, damage):
    checkpoint.save(VQGAN.from_preset("tiny"), tmp_path / "m")
    w = tmp_path / "m.safetensors"
    data = w.read_bytes()
    w.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00" * 64 + data[64:], "empty": b""}[damage])
    with pytest.raises(ValueError, match="safetensors"):
        checkpoint.load(tmp_path / "m")


def test_corrupt_config_is_a_value_error(tmp_path):
    checkpoint.save(VQGAN.from_preset("tiny"), tmp_path / "m")
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a vqfast checkpoint config"):
        checkpoint.load(tmp_path / "m")
