"""The training loop every family and stage shares: one process or torchrun DDP, bf16
autocast with fp32 master weights, gradient accumulation and clipping, warmup + cosine
learning rate, optional EMA weights, atomic checkpoints and exact resume.

    cfg = TrainConfig("maskgit", "tokenizer", data="photos", preset="tiny", out="runs/vq", steps=100)
    train(cfg)                       # -> RUN_DIR (checkpoints/, latest, log.jsonl, run.json, ...)
"""
from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from vqfast import checkpoint
from vqfast.quantizers import distributed as quantizer_distributed
from vqfast.train import checkpointing, distributed
from vqfast.train.adversarial import PERCEPTUAL_HINT, TokenizerCritic
from vqfast.train.data import BatchPlan, _mix, batches, open_images
from vqfast.train.families import check_classes, get_stage, timestep_sampler
from vqfast.train.log import RunLog
from vqfast.train.optim import fused_adam, load_optimizer_state

PRECISIONS = ("fp32", "bf16")
CHANNELS_LAST_FROM = 128  # image side from which TrainConfig.channels_last=None turns NHWC on
# What a resumed run shares with its checkpoint, so that it continues the same run. The other
# fields say where files are (paths may move) or how the run executes; steps may grow (the
# schedule then spans the new total); the discriminator may be turned on before its start.
RESUME_KEEPS = ("family", "stage", "preset", "batch_size", "lr", "grad_accum", "precision", "seed", "clip",
                "warmup", "ema", "holdout", "overrides")


@dataclass
class TrainConfig:
    """Everything a run needs (the command line's options). lr / warmup None: the stage's
    paper values. ema: the EMA decay of the weights (None: no EMA). clip: max gradient norm
    (None: no clipping). token_cache: a folder of token shards to train stage 2 from.
    init_from: start from these weights (a run folder or checkpoint of the same class), e.g. to
    fine-tune. stop_after: save and stop after this step (a job slot shorter than the run; the
    schedule still spans `steps`, and --resume continues). time_limit: the same after this many
    seconds of training. overrides: constructor arguments of the model that replace the
    preset's, e.g. {"num_classes": 13}. Tokenizer stages: perceptual_weights, a local VGG-16 /
    LPIPS file (PUT: VGG-19) for the perceptual term (None: off); adversarial: train with the
    paper's discriminator; disc_start: the step it starts at (None: the paper's).
    channels_last: keep images and the conv weights of the net that reads them (the tokenizer)
    channels-last (NHWC), the layout oneDNN's and cuDNN's fast conv kernels take (bf16 on an AMX
    CPU: 1.7x the NCHW step at 256x256); a token model stays NCHW (its convs see token maps).
    None: on from CHANNELS_LAST_FROM pixels, where it pays; not with fsdp."""

    family: str
    stage: str
    data: str
    preset: str
    out: str
    steps: int = 1000
    stop_after: int | None = None
    time_limit: float | None = None
    batch_size: int = 8
    lr: float | None = None
    grad_accum: int = 1
    precision: str = "fp32"
    resume: bool = False
    tokenizer: str | None = None
    init_from: str | None = None
    eval_every: int = 0
    save_every: int = 0
    seed: int = 0
    workers: int = 0
    clip: float | None = 1.0
    warmup: int | None = None
    ema: float | None = None
    holdout: float = 0.05
    token_cache: str | None = None
    fsdp: bool = False
    overrides: dict = field(default_factory=dict)
    device: str | None = None
    log_every: int = 1
    progress: bool = True
    dist_timeout: float = 600.0
    perceptual_weights: str | None = None
    adversarial: bool = True
    disc_start: int | None = None
    channels_last: bool | None = None

    def __post_init__(self):
        stage = get_stage(self.family, self.stage)
        for name in ("steps", "batch_size", "grad_accum", "log_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        for name in ("eval_every", "save_every", "workers", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be a non-negative int, got {v!r}")
        for name, low in (("stop_after", 1), ("warmup", 0)):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
                raise ValueError(f"{name} must be an int >= {low} or None, got {v!r}")
        for name in ("lr", "ema", "clip", "time_limit", "holdout", "dist_timeout"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise TypeError(f"{name} must be a number{'' if name in ('holdout', 'dist_timeout') else ' or None'}, "
                                f"got {v!r}")
        if not 0.0 <= self.holdout < 1.0:
            raise ValueError(f"holdout must be in [0, 1), got {self.holdout!r}")
        if not self.dist_timeout > 0:
            raise ValueError(f"dist_timeout must be > 0 seconds, got {self.dist_timeout!r}")
        if self.channels_last is not None and not isinstance(self.channels_last, bool):
            raise TypeError(f"channels_last must be a bool or None, got {self.channels_last!r}")
        if self.channels_last and self.fsdp:
            raise ValueError("channels_last is not supported with fsdp (FSDP shards contiguous parameters)")
        if not isinstance(self.overrides, dict) or not all(isinstance(k, str) for k in self.overrides):
            raise TypeError(f"overrides must be a dict of constructor argument names, got {self.overrides!r}")
        if self.time_limit is not None and not self.time_limit > 0:
            raise ValueError(f"time_limit must be a positive number of seconds or None, got {self.time_limit!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.ema is not None and not 0.0 < self.ema < 1.0:
            raise ValueError(f"ema must be a decay in (0, 1), got {self.ema!r}")
        if self.clip is not None and not self.clip > 0:
            raise ValueError(f"clip must be > 0 or None, got {self.clip!r}")
        if not isinstance(self.adversarial, bool):
            raise ValueError(f"adversarial must be a bool, got {self.adversarial!r}")
        if self.disc_start is not None and (isinstance(self.disc_start, bool) or not isinstance(self.disc_start, int)
                                            or self.disc_start < 0):
            raise ValueError(f"disc_start (--disc-start) must be a non-negative int or None (the paper's step), "
                             f"got {self.disc_start!r}")
        if stage.gan is None and self.disc_start is not None:
            raise ValueError(f"disc_start (--disc-start): the {self.family} {self.stage} stage has no discriminator "
                             f"(tokenizer stages do)")
        if self.perceptual_weights is not None:
            if stage.gan is None:
                raise ValueError(f"perceptual_weights (--perceptual-weights): the {self.family} {self.stage} stage "
                                 f"has no perceptual term (tokenizer stages do)")
            if not Path(self.perceptual_weights).is_file():
                raise ValueError(f"perceptual_weights (--perceptual-weights): no file at {self.perceptual_weights!r} "
                                 f"(a local VGG-16 / LPIPS weights file; nothing is downloaded)")


class _Objective(nn.Module):
    """model + stage as one module whose forward is the loss, so DDP / FSDP see the step (the
    tokenizer of stage 2 is frozen and the critic has its own wrapper: both are kept outside the
    module tree). forward -> (total, terms, (real, fake) images for the discriminator or None)."""

    def __init__(self, model: nn.Module, stage, tokenizer: nn.Module | None, critic: TokenizerCritic | None,
                 sampler=None):
        super().__init__()
        self.model, self.stage = model, stage
        self.__dict__["tokenizer"] = tokenizer
        self.__dict__["critic"] = critic
        self.__dict__["sampler"] = sampler

    def forward(self, inputs: dict, generator: int, step: int):
        if self.critic is not None:
            images = inputs["images"]
            out, real, fake = self.critic.generator_loss(self.model, images, self.stage.masks(images, generator), step)
            return out.total, out.terms, (real, fake)
        out = self.stage.loss(self.model, inputs, generator, tokenizer=self.tokenizer, sampler=self.sampler)
        return out.total, out.terms, None


def lr_lambda(step: int, *, warmup: int, total: int) -> float:
    """Linear warmup over `warmup` steps, then cosine decay to 0 at `total` (multiplier of lr)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


_STATE_KEYS = ("step", "world_size", "optimizer", "scheduler", "rng", "config")


def _resumable_state(folder: Path, cfg: TrainConfig) -> dict:
    """The training state of checkpoint `folder`, after checking that cfg continues that run
    (the RESUME_KEEPS settings, a token cache or images, steps not below the run's step)."""
    state = checkpointing.load_state(folder)
    missing = [k for k in _STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"--resume: {folder} is not a complete training checkpoint (no {missing})")
    saved, now, run = state["config"], json.loads(json.dumps(asdict(cfg))), folder.parent.parent
    diffs = [f"{k}={now[k]!r} (the run's: {saved[k]!r})" for k in RESUME_KEEPS if k in saved and now[k] != saved[k]]
    if "token_cache" in saved and (now["token_cache"] is None) != (saved["token_cache"] is None):
        diffs.append(f"token_cache={now['token_cache']!r} (the run's: {saved['token_cache']!r})")
    if diffs:
        raise ValueError(f"--resume: {run} was trained with other settings: {'; '.join(diffs)}. Resume with the "
                         f"run's settings (`python -m vqfast train FAMILY --resume RUN_DIR` takes them from the "
                         f"run) or start a new run (--init-from RUN_DIR starts from its weights)")
    if cfg.steps < int(state["step"]):
        raise ValueError(f"--resume: {run} is at step {state['step']}, past steps={cfg.steps}: pass --steps "
                         f"{state['step']} or more")
    if cfg.ema is not None and not (folder / "ema.safetensors").is_file():
        raise ValueError(f"--resume: the checkpoint {folder} holds no EMA weights")
    return state


def load_tokenizer(source: str, stage, device: torch.device) -> nn.Module:
    """The frozen tokenizer stage 2 trains on: a run folder, checkpoint folder or checkpoint path."""
    path = checkpointing.model_path(source)
    tok = checkpoint.load(path, expected=stage.tokenizer_cls, map_location=device)
    return tok.requires_grad_(False).eval()


@contextlib.contextmanager
def _stop_requests():
    """Yields a list that gets True appended on SIGTERM / SIGINT (the loop saves, then stops)."""
    flag: list[bool] = []
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for s in previous:
        signal.signal(s, lambda *_: flag.append(True))
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class _EMA:
    """fp32 exponential moving average of the trainable parameters (buffers follow the model)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: p.detach().float().clone() for k, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, p in model.named_parameters():
            if k in self.shadow:
                self.shadow[k].lerp_(p.detach().float(), 1.0 - self.decay)

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {k: self.shadow.get(k, v) for k, v in model.state_dict().items()}


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) a training run; returns the run folder. Rank 0 alone writes."""
    ctx = distributed.setup(cfg.device, cfg.dist_timeout)
    try:
        return Trainer(cfg, ctx).run()
    finally:
        distributed.teardown(ctx)


class Trainer:
    """One run: built from a TrainConfig on this process (model, data, optimizer, resumed state);
    `run()` trains to the end, `train_step(batches, autocast)` takes one optimizer step."""

    def __init__(self, cfg: TrainConfig, ctx: distributed.Context):
        self.cfg, self.ctx = cfg, ctx
        self.stage = stage = get_stage(cfg.family, cfg.stage)
        self.run_dir = Path(cfg.out)
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ValueError(f"out (--out) must be a run folder, but {self.run_dir} is a file")
        self.resume_from = checkpointing.latest(self.run_dir) if cfg.resume else None
        if cfg.resume and self.resume_from is None:
            raise ValueError(f"--resume: {self.run_dir} holds no checkpoint to resume from")
        if not cfg.resume and (self.run_dir / checkpointing.LATEST).exists():
            raise ValueError(f"{self.run_dir} already holds a run: pass --resume to continue it or pick another --out")
        self.resumed = _resumable_state(self.resume_from, cfg) if self.resume_from is not None else None
        if stage.needs_tokenizer and cfg.tokenizer is None:
            raise ValueError(f"--stage {cfg.stage} of {cfg.family} trains on a trained tokenizer: pass "
                             f"--tokenizer RUN_DIR_OR_CHECKPOINT")
        self.tokenizer = load_tokenizer(cfg.tokenizer, stage, ctx.device) if stage.needs_tokenizer else None
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        self.model = stage.build(cfg.preset, tokenizer=self.tokenizer, overrides=cfg.overrides).to(ctx.device)
        if stage.name == "refit":
            self.model.requires_grad_(True)
        if cfg.init_from is not None:
            checkpoint.load_state(self.model, checkpointing.model_path(cfg.init_from))
        resolution = stage.resolution(self.model, self.tokenizer)
        self.channels_last = cfg.channels_last
        if self.channels_last is None:
            self.channels_last = not cfg.fsdp and resolution >= CHANNELS_LAST_FROM
        if self.channels_last:  # the nets that read images; a token model's convs see token maps (NCHW pays)
            image_net = self.tokenizer if stage.name == "model" else self.model
            if image_net is not None:
                image_net.to(memory_format=torch.channels_last)
        if cfg.token_cache is not None:
            from vqfast.train.cache import TokenCache, fingerprint
            if not stage.cacheable:
                raise ValueError(f"--token-cache: the {cfg.family} {cfg.stage} stage does not train from tokens")
            self.data = TokenCache(cfg.token_cache)
            if self.data.index["family"] != cfg.family:
                raise ValueError(f"--token-cache {cfg.token_cache} holds {self.data.index['family']} tokens, "
                                 f"not {cfg.family}")
            made_by = self.data.index.get("tokenizer_fingerprint")
            if made_by is not None and made_by != fingerprint(self.tokenizer):
                raise ValueError(f"--token-cache {cfg.token_cache} was written by another tokenizer "
                                 f"({self.data.index.get('tokenizer')}) than --tokenizer {cfg.tokenizer}")
        else:
            self.data = open_images(cfg.data, resolution, split="train", holdout=cfg.holdout)
        check_classes(self.model, self.data)
        # opened now, not at the first evaluation: an empty held-out split fails before any step is trained
        self.heldout = (open_images(cfg.data, resolution, split="test", holdout=cfg.holdout)
                        if cfg.eval_every and ctx.is_main else None)
        torch.manual_seed(_mix(cfg.seed, "rank", ctx.rank))
        if self.resume_from is None:
            stage.prepare(self.model, self.data, torch.Generator().manual_seed(cfg.seed))
        else:
            self.model.load_state_dict(checkpointing.read_weights(self.resume_from, "model"))
        self.sharded = cfg.fsdp and ctx.distributed
        if self.sharded and (cfg.ema is not None or cfg.eval_every):
            raise ValueError("ema and eval_every are not supported with fsdp: keep EMA weights with DDP (without "
                             "--fsdp) and evaluate checkpoints with python -m vqfast eval")
        o = stage.optim
        self.critic = None
        if stage.gan is not None:
            self.critic = TokenizerCritic(stage.gan, perceptual_weights=cfg.perceptual_weights,
                                          adversarial=cfg.adversarial, disc_start=cfg.disc_start,
                                          lr=cfg.lr or o.lr, betas=o.betas, device=ctx.device,
                                          seed=_mix(cfg.seed, "discriminator"))
            if self.sharded and self.critic.discriminator is not None and self.critic.disc_start < cfg.steps:
                raise ValueError(f"the discriminator starts at step {self.critic.disc_start} of this run, and its "
                                 f"adaptive weight needs unsharded decoder weights: train without --fsdp, or pass "
                                 f"--no-adversarial or a --disc-start of at least --steps")
        self.sampler = timestep_sampler(stage, self.model, lambda t, losses: distributed.gather_cat(t, losses, ctx=ctx))
        self.objective = _Objective(self.model, stage, self.tokenizer, self.critic, self.sampler)
        if self.sharded:
            distributed.shard(self.objective, ctx)
        params = stage.trainable(self.model)
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr or o.lr, betas=o.betas, weight_decay=o.weight_decay,
                                           fused=fused_adam(params))
        warmup = o.warmup if cfg.warmup is None else cfg.warmup
        warmup = min(warmup, max(1, cfg.steps // 10))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_lambda(s, warmup=warmup, total=cfg.steps))
        self.ema = _EMA(self.model, cfg.ema) if cfg.ema is not None else None
        self.step = 0
        if self.resume_from is not None:
            self._restore(self.resume_from)
        if ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel
            ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            if not self.sharded:  # codebook buffers take the same all-reduced update on every rank; other
                # buffers (BatchNorm statistics) are rank 0's in a checkpoint either way: no per-step broadcast
                self.objective = DistributedDataParallel(self.objective, device_ids=ids, broadcast_buffers=False)
            if self.critic is not None:
                self.critic.wrap(lambda m: DistributedDataParallel(m, device_ids=ids))

    # -- state ---------------------------------------------------------------------------
    def _state(self) -> dict:
        rng = distributed.gather(checkpointing.rng_state(self.model), self.ctx)
        return {"step": self.step, "micro_batch": self.step * self.cfg.grad_accum,
                "world_size": self.ctx.world_size, "optimizer": self._optimizer_state(),
                "scheduler": self.scheduler.state_dict(), "rng": rng, "config": asdict(self.cfg),
                "discriminator": self.critic.state_dict() if self.critic is not None else {},
                "timestep_sampler": self.sampler.state_dict() if self.sampler is not None else {}}

    def _optimizer_state(self) -> dict:
        if self.sharded:
            return distributed.full_optimizer_state(self.objective, self.optimizer)
        return self.optimizer.state_dict()

    def _restore(self, folder: Path) -> None:
        """Everything but the weights (loaded before sharding / wrapping)."""
        state = self.resumed
        if state["config"]["fsdp"] != self.cfg.fsdp and self.ctx.distributed:
            raise ValueError(f"resume with the --fsdp setting of the run ({state['config']['fsdp']})")
        if self.sharded:
            distributed.load_full_optimizer_state(self.objective, self.optimizer, state["optimizer"])
        else:
            load_optimizer_state(self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.critic is not None:
            self.critic.load_state_dict(state.get("discriminator", {}), int(state["step"]))
        if self.sampler is not None and state.get("timestep_sampler"):
            self.sampler.load_state_dict(state["timestep_sampler"])
        if self.ema is not None:
            ema = checkpointing.read_weights(folder, "ema")
            self.ema.shadow = {k: ema[k].float() for k in self.ema.shadow}
        rng = state["rng"]
        checkpointing.set_rng_state(self.model, rng[self.ctx.rank % len(rng)])
        if state["world_size"] != self.ctx.world_size and self.ctx.is_main:
            print(f"resuming a {state['world_size']}-process run with {self.ctx.world_size} processes: the data "
                  f"order continues, random streams of extra ranks repeat those of the saved ones")
        self.step = int(state["step"])

    def save(self) -> None:
        state = self._state()  # collective: every rank takes part
        model_state = distributed.full_model_state(self.objective) if self.sharded else None
        if self.ctx.is_main:
            ema = self.ema.state_dict(self.model) if self.ema is not None else None
            checkpointing.save(self.run_dir, self.step, self.model, state, ema=ema, model_state=model_state)
        distributed.barrier(self.ctx)

    # -- loop ----------------------------------------------------------------------------
    def _inputs(self, batch, generator: int) -> dict:
        if self.cfg.token_cache is not None:
            return {k: v.to(self.ctx.device) for k, v in batch.items()}
        images, labels, _ = batch
        images = images.to(self.ctx.device)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        g = torch.Generator().manual_seed(generator)
        return self.stage.encode(self.tokenizer, images, labels.to(self.ctx.device), g)

    def _batches(self, plan: BatchPlan, start: int, stop: int):
        if self.cfg.token_cache is not None:
            return self.data.batches(plan, self.ctx.rank, start, stop)
        return batches(self.data, plan, self.ctx.rank, start, stop, self.cfg.workers)

    def run(self) -> Path:
        cfg, ctx = self.cfg, self.ctx
        if ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "run.json").write_text(json.dumps(asdict(cfg), indent=2))
        log = RunLog(self.run_dir if ctx.is_main else None, total=cfg.steps, start=self.step, unit=self.stage.unit,
                     progress=cfg.progress)
        if ctx.is_main and self.resume_from is not None:
            log.write({"kind": "resume", "step": self.step, "from": str(self.resume_from)})
        elif ctx.is_main:
            log.write({"kind": "data", "train_items": len(self.data), "classes": getattr(self.data, "num_classes", 0),
                       "empty_files": getattr(self.data, "empty_files", 0), "world_size": ctx.world_size})
            if self.critic is not None and not self.critic.has_perceptual:
                log.write({"kind": "note", "step": self.step, "note": PERCEPTUAL_HINT})
                print(PERCEPTUAL_HINT, file=sys.stderr)
        plan = BatchPlan(len(self.data), cfg.batch_size, world_size=ctx.world_size, seed=cfg.seed)
        last = cfg.steps if cfg.stop_after is None else min(cfg.steps, cfg.stop_after)
        it = self._batches(plan, self.step * cfg.grad_accum, last * cfg.grad_accum)
        autocast = torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
        skipped, window, items = 0, 0, 0
        started = time.perf_counter()
        try:
            with _stop_requests() as stop:
                while self.step < last:
                    sums, n_items, skipped_now = self.train_step(it, autocast)
                    skipped += skipped_now
                    items += n_items
                    window += 1
                    self.step += 1
                    out_of_time = cfg.time_limit is not None and time.perf_counter() - started > cfg.time_limit
                    stopping, values, counts = distributed.step_totals(bool(stop) or out_of_time, sums,
                                                                       (items, skipped), ctx)
                    if self.step % cfg.log_every == 0 or self.step == last or stopping:
                        values.update(lr=self.scheduler.get_last_lr()[0], skipped_files=counts[1])
                        log.step(self.step, values, samples=counts[0], steps=window)
                        window, items = 0, 0
                    if cfg.eval_every and self.step % cfg.eval_every == 0:
                        self._evaluate(log)
                    if stopping or (cfg.save_every and self.step % cfg.save_every == 0) or self.step == last:
                        self.save()
                    if stopping:
                        if ctx.is_main:
                            log.write({"kind": "stopped", "step": self.step,
                                       "reason": "time" if out_of_time else "signal"})
                        break
        finally:
            log.close()
        return self.run_dir

    def train_step(self, it, autocast) -> tuple[dict, int, int]:
        cfg, ctx = self.cfg, self.ctx
        self.model.train()
        sums: dict[str, float] = {}
        n_items = skipped = 0
        gan = self.critic is not None and self.critic.active(self.step)
        for a in range(cfg.grad_accum):
            batch = next(it)
            if isinstance(batch, tuple):
                skipped += batch[2]
            key = _mix(cfg.seed, "step", self.step, a, ctx.rank)
            inputs = self._inputs(batch, key)
            n_items += _count(inputs)
            last = a == cfg.grad_accum - 1
            with self._grad_sync(last), self._codebook_updates():
                with autocast:
                    total, terms, images = self.objective(inputs, key, self.step)
                (total / cfg.grad_accum).backward()
            if gan:  # the discriminator step on the pre-update reconstruction, as VQGAN alternates
                with self.critic.sync(last):
                    with autocast:
                        d_loss, d_terms = self.critic.discriminator_loss(*images)
                    (d_loss / cfg.grad_accum).backward()
                terms = {**terms, **d_terms}
            for k, v in {"loss": total.detach(), **terms}.items():
                sums[k] = sums.get(k, 0.0) + float(v) / cfg.grad_accum
        if cfg.clip is not None:
            norm = _clip(self.objective, self.optimizer, cfg.clip)
            sums["grad_norm"] = float(norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if gan:
            self.critic.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return sums, n_items, skipped

    def _codebook_updates(self):
        """Under DDP / FSDP, codebook EMA updates (and their all-reduce) run after the backward, so
        ranks wait for each other at the gradient all-reduce only (two-process step: see README)."""
        return quantizer_distributed.deferred_updates() if self.ctx.distributed else contextlib.nullcontext()

    def _grad_sync(self, sync: bool):
        """Gradients are reduced over ranks on the last micro-batch of a step only."""
        if self.sharded:
            self.objective.set_requires_gradient_sync(sync)
        elif self.ctx.distributed and not sync:
            return self.objective.no_sync()
        return contextlib.nullcontext()

    def _evaluate(self, log: RunLog) -> None:
        """Held-out loss and the figures of the step (rank 0; the others wait)."""
        if self.ctx.is_main:
            from vqfast.train.evaluate import training_figures
            record = training_figures(self.stage, self.model, self.tokenizer, self.heldout, self.run_dir,
                                      step=self.step, history=log.history)
            log.write({"kind": "eval", "step": self.step, **record})
        distributed.barrier(self.ctx)


def _count(inputs: dict) -> int:
    """Tokens (token models) or images (tokenizers; PUT's transformer, which reads images) in a
    batch, for the throughput."""
    return inputs["tokens"].numel() if "tokens" in inputs else inputs["images"].shape[0]


def _clip(objective: nn.Module, optimizer: torch.optim.Optimizer, max_norm: float) -> torch.Tensor:
    if hasattr(objective, "clip_grad_norm_"):  # FSDP1 reduces the norm over shards itself
        return objective.clip_grad_norm_(max_norm)
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    return torch.nn.utils.clip_grad_norm_(params, max_norm)
