"""vqfast.train.trainer on one process: exact resume, the run folder, accumulation, errors."""
import json

import pytest
import torch

from vqfast.train import TrainConfig, train
from vqfast.train.checkpointing import latest, load_state, read_weights
from vqfast.train.log import read_log


def config(data, out, **kw):
    base = dict(data=str(data), preset="tiny", out=str(out), steps=4, batch_size=2, progress=False, holdout=0.2)
    return TrainConfig("maskgit", "tokenizer", **{**base, **kw})


def weights(run):
    return read_weights(latest(run))


def discriminator(run):
    state = load_state(latest(run))["discriminator"]
    return {**{f"w/{k}": v for k, v in state["weights"].items()},
            **{f"adam/{i}/{k}": v for i, s in state["optimizer"]["state"].items() for k, v in s.items()}}


# disc_start 1: the discriminator trains from the second step on, so its weights and Adam state
# cross the checkpoint; None: the paper's (taming's 250001), never reached
@pytest.mark.parametrize("disc_start", [None, 1], ids=["paper", "gan"])
def test_resume_is_bitwise(image_folder, tmp_path, disc_start):
    straight = train(config(image_folder, tmp_path / "a", steps=4, disc_start=disc_start))
    train(config(image_folder, tmp_path / "b", steps=4, stop_after=2, disc_start=disc_start))
    resumed = train(config(image_folder, tmp_path / "b", steps=4, resume=True, disc_start=disc_start))
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the straight run's"
    losses = lambda run: [(r["loss"], r.get("d_loss")) for r in read_log(run)]  # noqa: E731
    assert losses(straight) == losses(resumed)
    assert [r["kind"] for r in read_log(resumed, None)].count("resume") == 1
    da, db = discriminator(straight), discriminator(resumed)
    assert da.keys() == db.keys() and all(torch.equal(da[k], db[k]) for k in da)
    assert any(k.startswith("adam/") for k in da) == (disc_start == 1)
    assert ("d_loss" in read_log(straight)[-1]) == (disc_start == 1)


def test_run_folder_holds_checkpoint_log_and_figures(image_folder, tmp_path):
    run = train(config(image_folder, tmp_path / "r", steps=2, eval_every=2, save_every=1, ema=0.9))
    assert (run / "latest").read_text().strip() == "checkpoints/step_000002"
    folder = latest(run)
    assert {p.name for p in folder.iterdir()} >= {"model.safetensors", "model.json", "ema.safetensors",
                                                   "state.safetensors", "state.json"}
    records = read_log(run)
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["img_per_s"] > 0 and r["skipped_files"] >= 0 and "rec" in r for r in records)
    assert read_log(run, "eval")[0]["heldout_loss"] > 0
    data = read_log(run, "data")[0]
    assert data["empty_files"] == 1 and data["classes"] == 2 and data["world_size"] == 1
    assert (run / "reconstructions.png").stat().st_size > 0 and (run / "losses.png").stat().st_size > 0
    assert json.loads((run / "run.json").read_text())["family"] == "maskgit"


def test_resume_with_accumulation_and_ema_is_bitwise(image_folder, tmp_path):
    kw = dict(steps=2, batch_size=1, grad_accum=2, ema=0.5, disc_start=0)
    straight = train(config(image_folder, tmp_path / "a", **kw))
    train(config(image_folder, tmp_path / "b", stop_after=1, **kw))
    resumed = train(config(image_folder, tmp_path / "b", resume=True, **kw))
    for name in ("model", "ema"):
        a, b = read_weights(latest(straight), name), read_weights(latest(resumed), name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    da, db = discriminator(straight), discriminator(resumed)
    assert all(torch.equal(da[k], db[k]) for k in da)


def test_bf16_run_trains(image_folder, tmp_path):
    run = train(config(image_folder, tmp_path / "bf16", steps=2, precision="bf16", disc_start=0))
    assert all(torch.isfinite(torch.tensor([r["loss"], r["g_loss"], r["d_loss"]])).all() for r in read_log(run))
    assert all(v.dtype == torch.float32 for k, v in weights(run).items() if "quantizer" not in k)


def test_errors_before_training(image_folder, tmp_path):
    with pytest.raises(ValueError, match="holds no checkpoint"):
        train(config(image_folder, tmp_path / "none", resume=True))
    train(config(image_folder, tmp_path / "done", steps=1))
    with pytest.raises(ValueError, match="already holds a run"):
        train(config(image_folder, tmp_path / "done", steps=1))
    with pytest.raises(ValueError, match="--tokenizer"):
        train(TrainConfig("maskgit", "model", data=str(image_folder), preset="tiny", out=str(tmp_path / "m")))
    with pytest.raises(ValueError, match="precision"):
        config(image_folder, tmp_path / "x", precision="fp16")
    with pytest.raises(ValueError, match="family must be one of"):
        TrainConfig("dalle", "tokenizer", data="photos", preset="tiny", out="x")
    with pytest.raises(ValueError, match="'test' split .* is empty"):  # before a step is trained, not at the first eval
        train(config(image_folder, tmp_path / "noeval", holdout=0.0, eval_every=1))
    assert not (tmp_path / "noeval" / "log.jsonl").exists()
    for device, pattern in [("gpu0", "must name a torch device"), ("cuda:999", "usable CUDA devices")]:
        with pytest.raises(ValueError, match=pattern):
            train(config(image_folder, tmp_path / "dev", device=device))
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ValueError, match="must be a run folder"):
        train(config(image_folder, tmp_path / "file"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        train(config(empty, tmp_path / "e"))


def test_class_conditional_model_checks_the_datas_classes_before_training(image_folder, tmp_path):
    common = dict(steps=1, batch_size=2, progress=False)
    tok = train(TrainConfig("rq", "tokenizer", data=str(image_folder), preset="tiny", out=str(tmp_path / "t"),
                            **common))
    cond = dict(preset="tiny-cond", tokenizer=str(tok), **common)
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in list(image_folder.glob("*/*.png"))[:4]:
        p.rename(flat / f"{p.parent.name}_{p.name}")
    with pytest.raises(ValueError, match="no class labels"):
        train(TrainConfig("rq", "model", data=str(flat), out=str(tmp_path / "a"), **cond))
    with pytest.raises(ValueError, match=r"2 classes but the model has num_classes=1: pass --override num_classes=2"):
        train(TrainConfig("rq", "model", data=str(image_folder), out=str(tmp_path / "b"),
                          overrides={"num_classes": 1}, **cond))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    run = train(TrainConfig("rq", "model", data=str(image_folder), out=str(tmp_path / "c"), **cond))
    assert len(read_log(run)) == 1


def test_resume_refuses_a_checkpoint_it_cannot_continue(image_folder, tmp_path):
    run = train(config(image_folder, tmp_path / "r", steps=2, stop_after=1))
    for change, pattern in [({"preset": "64px"}, r"preset='64px' \(the run's: 'tiny'\)"),
                            ({"overrides": {"codebook_size": 128}}, r"overrides=\{'codebook_size': 128\} \(the run's"),
                            ({"ema": 0.9}, r"ema=0.9 \(the run's: None\)"),
                            ({"batch_size": 3, "seed": 5}, r"batch_size=3 \(the run's: 2\); seed=5")]:
        with pytest.raises(ValueError, match=pattern):
            train(config(image_folder, run, steps=2, resume=True, **change))
    with_ema = train(config(image_folder, tmp_path / "e", steps=2, stop_after=1, ema=0.9))
    (latest(with_ema) / "ema.safetensors").unlink()
    with pytest.raises(ValueError, match="holds no EMA weights"):
        train(config(image_folder, with_ema, steps=2, resume=True, ema=0.9))
    with pytest.raises(ValueError, match="family='rq' \\(the run's: 'maskgit'\\)"):
        train(TrainConfig("rq", "tokenizer", data=str(image_folder), preset="tiny", out=str(run), steps=2,
                          batch_size=2, progress=False, holdout=0.2, resume=True))
    (latest(run) / "state.json").write_text('{"__dict__": [["step", 1]]}')
    with pytest.raises(ValueError, match="not a complete training checkpoint"):
        train(config(image_folder, run, steps=2, resume=True))


@pytest.mark.parametrize("field, value, exc", [
    ("lr", "1e-3", TypeError), ("ema", "0.9", TypeError), ("clip", "1", TypeError), ("time_limit", True, TypeError),
    ("holdout", 1.5, ValueError), ("holdout", -0.1, ValueError), ("warmup", -5, ValueError),
    ("stop_after", True, ValueError), ("dist_timeout", -1.0, ValueError)])
def test_config_values_are_checked(tmp_path, field, value, exc):
    with pytest.raises(exc, match=field):
        config(tmp_path, tmp_path / "x", **{field: value})


def test_channels_last_trains_as_nchw_and_resumes_bitwise(image_folder, tmp_path):
    from vqfast.train.distributed import Context
    from vqfast.train.trainer import Trainer

    kw = dict(steps=3, disc_start=1, channels_last=True)
    trainer = Trainer(config(image_folder, tmp_path / "t", **kw), Context(0, 1, 0, torch.device("cpu")))
    convs = [p for p in trainer.model.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
                         for p in convs if p.shape[1] > 1 and p.shape[2:] != (1, 1))
    default = Trainer(config(image_folder, tmp_path / "d"), Context(0, 1, 0, torch.device("cpu")))
    assert default.channels_last is False  # 32 x 32 images: below CHANNELS_LAST_FROM
    nhwc = train(config(image_folder, tmp_path / "a", **kw))
    nchw = train(config(image_folder, tmp_path / "n", **{**kw, "channels_last": False}))
    first, *rest = zip(read_log(nhwc), read_log(nchw))
    assert first[0]["loss"] == pytest.approx(first[1]["loss"], rel=1e-5)  # the same weights: rounding apart
    for a, b in rest:  # Adam's first updates magnify the layouts' different rounding
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-2)
        assert a.get("d_loss") == pytest.approx(b.get("d_loss"), rel=1e-2)
    assert "d_loss" in read_log(nhwc)[-1]
    train(config(image_folder, tmp_path / "b", stop_after=2, **kw))
    resumed = train(config(image_folder, tmp_path / "b", resume=True, **kw))
    a, b = weights(nhwc), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed channels-last weights differ from the straight run's"
    with pytest.raises(TypeError, match="channels_last"):
        config(image_folder, tmp_path / "x", channels_last="yes")
    with pytest.raises(ValueError, match="channels_last"):
        config(image_folder, tmp_path / "x", channels_last=True, fsdp=True)


def test_vqddm_trains_with_the_importance_sampler_and_resumes_it_bitwise(image_folder, tmp_path):
    """The model stage draws t from p(t) ~ sqrt(E[L_t^2]) once every t has > 10 losses (T = 4 here,
    warm within 40 steps of 2-image batches), and the sampler's history is part of the resumable state."""
    from vqfast import checkpoint
    from vqfast.models.common.vqgan import VQGAN

    torch.manual_seed(0)
    checkpoint.save(VQGAN.from_preset("tiny"), tmp_path / "vq" / "model")
    kw = dict(data=str(image_folder), preset="tiny", steps=40, batch_size=2, progress=False, holdout=0.2,
              tokenizer=str(tmp_path / "vq"), overrides={"T": 4})
    straight = train(TrainConfig("vqddm", "model", out=str(tmp_path / "a"), **kw))
    train(TrainConfig("vqddm", "model", out=str(tmp_path / "b"), stop_after=30, **kw))
    resumed = train(TrainConfig("vqddm", "model", out=str(tmp_path / "b"), resume=True, **kw))
    sampler = load_state(latest(straight))["timestep_sampler"]
    assert int(sampler["count"].sum()) == 80 and bool((sampler["count"][1:] > 10).all())  # warm: p(t) not uniform
    assert torch.equal(sampler["history"], load_state(latest(resumed))["timestep_sampler"]["history"])
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_put_tokenizer_trains_with_an_independent_reference_mask():
    """PUT eq. 1: the decoder's reference branch sees x_hat * m' with m' a second mask, all
    visible for about a quarter of the images."""
    from vqfast.train import get_stage

    images = torch.zeros(64, 3, 32, 32)
    stage = get_stage("put", "tokenizer")
    mask, ref = stage.masks(images, 7)
    again = stage.masks(images, 7)
    assert torch.equal(mask, again[0]) and torch.equal(ref, again[1])
    assert mask.shape == ref.shape == (64, 32, 32) and mask.dtype == ref.dtype == torch.bool
    off = ~ref.flatten(1).any(1)
    assert 4 <= int(off.sum()) <= 28 and not torch.equal(mask[~off], ref[~off])
    assert mask.flatten(1).any(1).all()
    assert get_stage("put", "model").masks(images, 7) is None and get_stage("rq", "tokenizer").masks(images, 7) is None


def test_optimizers_run_fused_and_step_like_the_loop_adamw(image_folder, tmp_path):
    from vqfast.train.distributed import Context
    from vqfast.train.optim import fused_adam
    from vqfast.train.trainer import Trainer

    t = Trainer(config(image_folder, tmp_path / "r", disc_start=0), Context(0, 1, 0, torch.device("cpu")))
    assert t.optimizer.param_groups[0]["fused"] and t.critic.optimizer.param_groups[0]["fused"]
    params = [p for g in t.optimizer.param_groups for p in g["params"]]
    g = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    copies = [p.detach().clone().requires_grad_() for p in params]
    for c, p in zip(copies, params):
        c.grad = p.grad.clone()
    loop = torch.optim.AdamW(copies, **{k: t.optimizer.defaults[k] for k in ("lr", "betas", "weight_decay", "eps")},
                             foreach=False)
    for _ in range(3):
        t.optimizer.step()
        loop.step()
    for c, p in zip(copies, params):
        torch.testing.assert_close(p.detach(), c.detach(), rtol=1e-5, atol=1e-7)
    assert not fused_adam([]) and not fused_adam([torch.zeros(2, dtype=torch.long)])
    assert not fused_adam([torch.zeros(2, device="meta")])


def test_loaded_adam_moments_take_their_parameters_layout():
    from vqfast.train.optim import load_optimizer_state

    g = torch.Generator().manual_seed(0)
    p = torch.randn(4, 3, 3, 3, generator=g).contiguous(memory_format=torch.channels_last).requires_grad_()
    grads = [torch.randn(p.shape, generator=g) for _ in range(2)]
    straight = torch.optim.AdamW([p], lr=0.1, fused=True)
    p.grad = grads[0].contiguous(memory_format=torch.channels_last)
    straight.step()
    saved = straight.state_dict()
    saved["state"] = {i: {k: v.clone(memory_format=torch.contiguous_format) for k, v in s.items()} for i, s in saved["state"].items()}  # as stored
    q = p.detach().clone(memory_format=torch.channels_last).requires_grad_()
    resumed = torch.optim.AdamW([q], lr=0.1, fused=True)
    load_optimizer_state(resumed, saved)
    assert resumed.state[q]["exp_avg"].stride() == q.stride()
    for param, opt in ((p, straight), (q, resumed)):
        param.grad = grads[1].contiguous(memory_format=torch.channels_last)
        opt.step()
    assert torch.equal(p, q)


def test_channels_last_applies_to_the_image_net_not_the_token_model(image_folder, tmp_path):
    from vqfast import checkpoint
    from vqfast.models.common.vqgan import VQGAN
    from vqfast.train.distributed import Context
    from vqfast.train.trainer import Trainer

    torch.manual_seed(0)
    checkpoint.save(VQGAN.from_preset("tiny"), tmp_path / "vq" / "model")
    cfg = TrainConfig("vqddm", "model", data=str(image_folder), preset="tiny", out=str(tmp_path / "r"), steps=1,
                      batch_size=2, progress=False, holdout=0.2, tokenizer=str(tmp_path / "vq"), channels_last=True)
    t = Trainer(cfg, Context(0, 1, 0, torch.device("cpu")))
    layouts = lambda m: {p.is_contiguous() for p in m.parameters() if p.dim() == 4 and p.shape[2:] != (1, 1)}  # noqa: E731
    assert layouts(t.model) == {True}  # the denoiser's convs see the 16 x 16 token map: NCHW
    assert layouts(t.tokenizer) == {False}  # the tokenizer reads the images: NHWC
