"""vqfast.train.checkpointing: nothing pickled, structures round-trip, a crash mid-save keeps
the previous checkpoint as the latest."""
import pytest
import torch

from vqfast import checkpoint
from vqfast.models.common.vqgan import VQGAN
from vqfast.train import checkpointing


def test_flatten_round_trips_optimizer_like_state():
    state = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(4)}},
             "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.95), "params": [0], "foreach": None}], "name": "x"}
    structure, tensors = checkpointing.flatten(state)
    back = checkpointing.unflatten(structure, tensors)
    assert list(back["state"]) == [0]  # int keys stay ints
    assert torch.equal(back["state"][0]["exp_avg"], state["state"][0]["exp_avg"])
    assert back["param_groups"][0]["betas"] == [0.9, 0.95] and back["param_groups"][0]["foreach"] is None


def test_flatten_rejects_objects_it_cannot_store():
    with pytest.raises(TypeError, match="cannot store a object"):
        checkpointing.flatten({"x": object()})


def test_module_generators_are_found_and_restored():
    vq = VQGAN.from_preset("tiny")
    gens = checkpointing.module_generators(vq)
    assert any(k.endswith(":generator") for k in gens)
    state = checkpointing.rng_state(vq)
    before = [torch.rand(3, generator=g) for g in gens.values()] + [torch.rand(3)]
    checkpointing.set_rng_state(vq, state)
    after = [torch.rand(3, generator=g) for g in gens.values()] + [torch.rand(3)]
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_crash_mid_save_keeps_the_previous_latest(tmp_path, monkeypatch):
    vq = VQGAN.from_preset("tiny")
    first = checkpointing.save(tmp_path, 1, vq, {"step": 1})
    assert checkpointing.latest(tmp_path) == first

    def crash(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr("safetensors.torch.save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        checkpointing.save(tmp_path, 2, vq, {"step": 2})
    assert checkpointing.latest(tmp_path) == first
    assert checkpointing.load_state(first)["step"] == 1
    loaded = checkpoint.load(checkpointing.model_path(tmp_path), expected=VQGAN)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), vq.state_dict().values()))


def test_old_checkpoints_are_pruned(tmp_path):
    vq = VQGAN.from_preset("tiny")
    for step in (1, 2, 3):
        checkpointing.save(tmp_path, step, vq, {"step": step}, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000002", "step_000003"]


def test_model_path_rejects_a_folder_without_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="neither a training run"):
        checkpointing.model_path(tmp_path)


@pytest.mark.parametrize("damage", ["truncated state", "truncated weights", "missing tensor"])
def test_a_damaged_checkpoint_is_a_value_error(tmp_path, damage):
    folder = checkpointing.save(tmp_path, 1, VQGAN.from_preset("tiny"), {"step": 1, "w": torch.ones(2)})
    read = checkpointing.read_weights if damage == "truncated weights" else checkpointing.load_state
    if damage == "missing tensor":
        (folder / "state.json").write_text((folder / "state.json").read_text().replace('"/w"', '"/gone"'))
    else:
        f = folder / ("model.safetensors" if damage == "truncated weights" else "state.safetensors")
        f.write_bytes(f.read_bytes()[:-1])
    with pytest.raises(ValueError, match="not a readable"):
        read(folder)
    with pytest.raises(ValueError, match="holds no ema weights"):
        checkpointing.read_weights(folder, "ema")
