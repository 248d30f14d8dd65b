"""Token cache: encode a dataset once with a trained tokenizer into safetensors shards, then
train stage 2 from the shards (no image decoding or tokenizer forward per step).

    write_cache("maskgit", tokenizer="runs/vq", data="path/to/images", out="runs/vq_tokens")
    torchrun --nproc_per_node 8 -m vqfast cache maskgit --tokenizer runs/vq --data DIR --out runs/vq_tokens
    python -m vqfast train maskgit --stage model --token-cache runs/vq_tokens --tokenizer runs/vq ...

CACHE_DIR/index.json lists the shards ({"shards": [{"file": ..., "rows": n}], "rows": N, ...});
each shard holds "tokens" [n, ...] (int16 for codebooks up to 32767 codes, else int32),
"labels" [n] int64 and, for MQ-VAE, "positions" (int32); batches come out int64.
Images are encoded as held-out images are (centre crop, no flip); with flips, each batch's
mirrored crops follow it. Under torchrun each rank encodes a contiguous share of the images
into its own shards, so the rows are in image order whatever the number of ranks. The index
is written last, so a cache whose writing was interrupted has no index and is refused; it
holds a fingerprint of the tokenizer's weights, which training checks against its tokenizer.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import nn

INDEX = "index.json"


def fingerprint(tokenizer: nn.Module) -> str:
    """A hash of a tokenizer's weights and buffers (names, shapes, dtypes, values)."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(tokenizer.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def write_cache(family: str, *, tokenizer: str, data: str, out: str | Path, batch_size: int = 64,
                shard_rows: int = 65536, holdout: float = 0.05, device: str | None = None, workers: int = 0,
                flips: bool = False, progress: bool = False, dist_timeout: float = 600.0) -> Path:
    """Encode the training split of `data` with the tokenizer of a run into shards; returns out.
    workers: image decoding processes per rank; flips: also the mirrored crops (2N rows)."""
    from safetensors.torch import save_file

    from vqfast.progress import progress_bar
    from vqfast.train import distributed
    from vqfast.train.data import collate, open_images
    from vqfast.train.families import get_stage
    from vqfast.train.trainer import load_tokenizer

    stage = get_stage(family, "model")
    if not stage.cacheable:
        raise ValueError(f"{family}'s token model does not train from cached tokens")
    for name, v in (("batch_size", batch_size), ("shard_rows", shard_rows)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be a non-negative int, got {workers!r}")
    if not isinstance(flips, bool):
        raise TypeError(f"flips must be a bool, got {flips!r}")
    out = Path(out)
    if (out / INDEX).exists():
        raise ValueError(f"{out} already holds a token cache")
    ctx = distributed.setup(device, dist_timeout)
    try:
        tok = load_tokenizer(tokenizer, stage, ctx.device)
        images = open_images(data, int(tok.config["resolution"]), split="train", holdout=holdout)
        out.mkdir(parents=True, exist_ok=True)
        lo, hi = (len(images) * r // ctx.world_size for r in (ctx.rank, ctx.rank + 1))
        loader = torch.utils.data.DataLoader(
            images, batch_sampler=[list(range(i, min(hi, i + batch_size))) for i in range(lo, hi, batch_size)],
            collate_fn=collate, num_workers=workers)
        compact = {"tokens": torch.int16 if getattr(tok, "codebook_size", 1 << 31) < (1 << 15) else torch.int32,
                   "positions": torch.int32}
        shards, pending, skipped = [], [], 0

        def flush():
            rows = {k: torch.cat([p[k] for p in pending]) for k in pending[0]}
            name = f"shard_{ctx.rank:03d}_{len(shards):05d}.safetensors"
            save_file({k: v.contiguous() for k, v in rows.items()}, str(out / name))
            shards.append({"file": name, "rows": len(rows["labels"])})
            pending.clear()

        bar = progress_bar(hi - lo, "cache", progress and ctx.is_main, unit="img")
        for x, labels, k in loader:
            skipped += k
            views = (x, x.flip(-1)) if flips else (x,)
            for v in views:
                enc = stage.encode(tok, v.to(ctx.device), labels, torch.Generator())
                pending.append({name: t.to("cpu", compact.get(name, t.dtype)) for name, t in enc.items()})
            if sum(len(p["labels"]) for p in pending) >= shard_rows:
                flush()
            bar.update(len(labels))
        bar.close()
        if pending:
            flush()
        parts = distributed.gather((shards, skipped), ctx)
        if ctx.is_main:
            shards = [s for part, _ in parts for s in part]
            index = {"family": family, "tokenizer": str(tokenizer), "tokenizer_fingerprint": fingerprint(tok),
                     "data": str(data), "holdout": holdout, "flips": flips, "rows": sum(s["rows"] for s in shards),
                     "shards": shards, "skipped_files": sum(k for _, k in parts)}
            tmp = out / f".{INDEX}.tmp-{os.getpid()}"
            tmp.write_text(json.dumps(index, indent=2))
            os.replace(tmp, out / INDEX)
        distributed.barrier(ctx)
    finally:
        distributed.teardown(ctx)
    return out


class TokenCache:
    """The rows of a token cache, read through the same BatchPlan as images.

        cache = TokenCache("runs/vq_tokens"); len(cache); next(cache.batches(plan, rank, 0, 10))
    """

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        if not (folder / INDEX).exists():
            raise ValueError(f"{folder} is not a token cache (no {INDEX}; write one with python -m vqfast cache)")
        try:
            self.index = json.loads((folder / INDEX).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{folder / INDEX} is not a token cache index: {err}") from None
        shards = self.index.get("shards") if isinstance(self.index, dict) else None
        if not (isinstance(shards, list) and shards and isinstance(self.index.get("family"), str)
                and all(isinstance(s, dict) and isinstance(s.get("file"), str) for s in shards)):
            raise ValueError(f"{folder / INDEX} is not a token cache index: expected {{'family': str, 'shards': "
                             f"[{{'file': str, 'rows': int}}, ...]}} with at least one shard")
        parts = [_read_shard(folder, s) for s in shards]
        if any(p.keys() != parts[0].keys() for p in parts):
            kinds = sorted({tuple(sorted(p)) for p in parts})
            raise ValueError(f"the shards of {folder} hold different tensors: {kinds}")
        self.rows = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def __len__(self) -> int:
        return len(self.rows["labels"])

    def batches(self, plan, rank: int, start: int, stop: int):
        """{"tokens", "labels", ...} batches of this rank for micro-batches [start, stop)."""
        for j in range(start, stop):
            idx = torch.tensor([i for i, _ in plan.keys(j, rank)])
            yield {k: v[idx].long() for k, v in self.rows.items()}


def _read_shard(folder: Path, entry: dict) -> dict[str, torch.Tensor]:
    """One shard's tensors, checked: integer "tokens" and "labels" (and "positions") of the rows the index lists."""
    from safetensors.torch import load_file

    path = folder / entry["file"]
    try:
        part = load_file(str(path))
    except Exception as err:  # a missing file, or safetensors' own SafetensorError on a damaged one
        raise ValueError(f"token cache shard {path} is not readable: {err}") from None
    rows = {k: (v.dtype, v.shape[0] if v.dim() else None) for k, v in part.items()}
    ints = (torch.int16, torch.int32, torch.int64)
    bad = any(d not in ints or n != entry.get("rows") for d, n in rows.values())
    if bad or not {"tokens", "labels"} <= rows.keys():
        raise ValueError(f"token cache shard {path} must hold integer 'tokens' and 'labels' of {entry.get('rows')} "
                         f"rows, got {rows}")
    return part
