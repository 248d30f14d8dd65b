"""vqfast.train.cache: shards hold the tokenizer's tokens of the centre crops (and their mirrors);
decoding workers and two torchrun ranks write the same rows; stage 2 trains from them with the
tokenizer that wrote them."""
import json
import subprocess

import pytest
import torch
from safetensors.torch import save_file

from tests.train.test_distributed import TORCHRUN, _env
from vqfast import checkpoint
from vqfast.__main__ import main
from vqfast.train import TrainConfig, train
from vqfast.train.cache import TokenCache, write_cache
from vqfast.train.checkpointing import model_path
from vqfast.train.data import BatchPlan, open_images
from vqfast.train.log import read_log


@pytest.fixture
def tokenizer_run(image_folder, tmp_path):
    return train(TrainConfig("maskgit", "tokenizer", data=str(image_folder), preset="tiny", out=str(tmp_path / "vq"),
                             steps=1, batch_size=4, progress=False, holdout=0.2))


def test_shards_hold_the_tokens_of_the_centre_crops(image_folder, tokenizer_run, tmp_path):
    main(["cache", "maskgit", "--tokenizer", str(tokenizer_run), "--data", str(image_folder),
          "--out", str(tmp_path / "cache"), "--shard-rows", "4", "--batch-size", "3", "--holdout", "0.2"])
    cache = TokenCache(tmp_path / "cache")
    images = open_images(str(image_folder), 32, split="train", holdout=0.2)
    assert len(cache) == len(images) and len(cache.index["shards"]) > 1
    assert cache.index["skipped_files"] in (0, 1)  # the corrupt file, when it falls in the train split
    vq = checkpoint.load(model_path(tokenizer_run))
    x = torch.stack([images[(i, None)][0] for i in range(3)])
    assert cache.rows["tokens"].dtype == torch.int16  # 256 codes: two bytes a token in memory
    assert torch.equal(cache.rows["tokens"][:3].long(), vq.encode(x))
    batch = next(cache.batches(BatchPlan(len(cache), 2, seed=0), 0, 0, 1))
    assert batch["tokens"].shape == (2, 8, 8) and batch["tokens"].dtype == batch["labels"].dtype == torch.long


def test_flips_add_the_mirrored_crops_and_workers_write_the_same_rows(image_folder, tokenizer_run, tmp_path):
    kw = dict(tokenizer=str(tokenizer_run), data=str(image_folder), holdout=0.2, batch_size=3)
    plain = TokenCache(write_cache("maskgit", out=tmp_path / "plain", **kw))
    flipped = TokenCache(write_cache("maskgit", out=tmp_path / "flips", flips=True, workers=1, shard_rows=5, **kw))
    assert len(flipped) == 2 * len(plain) and flipped.index["flips"] and not plain.index["flips"]
    vq = checkpoint.load(model_path(tokenizer_run))
    images = open_images(str(image_folder), 32, split="train", holdout=0.2)
    x = torch.stack([images[(i, None)][0] for i in range(3)])
    assert torch.equal(flipped.rows["tokens"][:3], plain.rows["tokens"][:3])
    assert torch.equal(flipped.rows["tokens"][3:6].long(), vq.encode(x.flip(-1)))  # the batch's mirrors follow it
    assert torch.equal(flipped.rows["labels"][3:6], plain.rows["labels"][:3])
    sizes = [min(3, len(plain) - i) for i in range(0, len(plain), 3)]  # batches of 3, then the rest
    starts = [2 * sum(sizes[:b]) for b in range(len(sizes))]
    originals = torch.cat([flipped.rows["tokens"][a:a + n] for a, n in zip(starts, sizes)])
    assert torch.equal(originals, plain.rows["tokens"])


@pytest.mark.slow
def test_two_ranks_write_the_rows_of_one_process(image_folder, tokenizer_run, tmp_path):
    write_cache("maskgit", tokenizer=str(tokenizer_run), data=str(image_folder), out=tmp_path / "one", holdout=0.2)
    cmd = [*TORCHRUN, "-m", "vqfast", "cache", "maskgit", "--tokenizer", str(tokenizer_run), "--data",
           str(image_folder), "--out", str(tmp_path / "two"), "--holdout", "0.2", "--batch-size", "2"]
    run = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
    one, two = TokenCache(tmp_path / "one"), TokenCache(tmp_path / "two")
    assert {s["file"][:9] for s in two.index["shards"]} == {"shard_000", "shard_001"}
    assert one.rows.keys() == two.rows.keys() and all(torch.equal(one.rows[k], two.rows[k]) for k in one.rows)


def test_fingerprint_follows_every_weight_and_buffer():
    from vqfast.train.cache import fingerprint
    net = torch.nn.BatchNorm1d(3)  # 0-dim int64 num_batches_tracked, float buffers and weights
    same = torch.nn.BatchNorm1d(3)
    assert fingerprint(net) == fingerprint(same)
    with torch.no_grad():
        same.weight[1] = 2.0
    assert fingerprint(net) != fingerprint(same)
    same.load_state_dict(net.state_dict())
    same.num_batches_tracked += 1
    assert fingerprint(net) != fingerprint(same)


def test_cache_errors(tokenizer_run, image_folder, tmp_path):
    with pytest.raises(ValueError, match="not a token cache"):
        TokenCache(tmp_path)
    with pytest.raises(ValueError, match="does not train from cached tokens"):
        write_cache("put", tokenizer=str(tokenizer_run), data=str(image_folder), out=tmp_path / "c")
    for bad, message in [(dict(workers=-1), "workers must be"), (dict(batch_size=0), "batch_size must be"),
                         (dict(flips=1), "flips must be a bool")]:
        with pytest.raises((ValueError, TypeError), match=message):
            write_cache("maskgit", tokenizer=str(tokenizer_run), data=str(image_folder), out=tmp_path / "d", **bad)
    write_cache("maskgit", tokenizer=str(tokenizer_run), data=str(image_folder), out=tmp_path / "e")
    with pytest.raises(ValueError, match="already holds a token cache"):
        write_cache("maskgit", tokenizer=str(tokenizer_run), data=str(image_folder), out=tmp_path / "e")


def test_training_refuses_a_cache_of_another_tokenizer(image_folder, tokenizer_run, tmp_path):
    other = train(TrainConfig("maskgit", "tokenizer", data=str(image_folder), preset="tiny", out=str(tmp_path / "vq2"),
                              steps=1, batch_size=4, progress=False, holdout=0.2, seed=1))
    write_cache("maskgit", tokenizer=str(tokenizer_run), data=str(image_folder), out=tmp_path / "cache", holdout=0.2)
    with pytest.raises(ValueError, match="written by another tokenizer"):
        train(TrainConfig("maskgit", "model", data=str(image_folder), preset="tiny", out=str(tmp_path / "m"),
                          steps=1, batch_size=2, progress=False, holdout=0.2, tokenizer=str(other),
                          token_cache=str(tmp_path / "cache")))


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"shard_rows": True}], ids=["batch_size", "shard_rows"])
def test_cache_sizes_are_checked_before_anything_is_written(tmp_path, kwargs):
    with pytest.raises(ValueError, match=f"{next(iter(kwargs))} must be a positive int"):
        write_cache("maskgit", tokenizer=str(tmp_path / "vq"), data="photos", out=tmp_path / "c", **kwargs)
    assert not (tmp_path / "c").exists()


def _shard_cache(folder, damage):
    """A one-shard maskgit cache of 4 rows, damaged as `damage` says."""
    folder.mkdir()
    tensors = {"tokens": torch.zeros(4, 8, 8, dtype=torch.long), "labels": torch.zeros(4, dtype=torch.long)}
    if damage == "short labels":
        tensors["labels"] = tensors["labels"][:3]
    if damage == "float tokens":
        tensors["tokens"] = tensors["tokens"].float()
    save_file(tensors, str(folder / "shard_00000.safetensors"))
    if damage == "truncated shard":
        shard = folder / "shard_00000.safetensors"
        shard.write_bytes(shard.read_bytes()[:-3])
    shards = [] if damage == "no shards" else [{"file": "shard_00000.safetensors", "rows": 4}]
    (folder / "index.json").write_text(json.dumps({"family": "maskgit", "rows": 4, "shards": shards}))
    return folder


@pytest.mark.parametrize("damage, pattern", [("truncated shard", "not readable"), ("short labels", "of 4 rows"),
                                             ("float tokens", "integer 'tokens'"), ("no shards", "at least one shard")])
def test_a_damaged_cache_is_a_value_error(tmp_path, damage, pattern):
    with pytest.raises(ValueError, match=pattern):
        TokenCache(_shard_cache(tmp_path / "cache", damage))


def test_stage_two_trains_from_the_cache(image_folder, tokenizer_run, tmp_path):
    write_cache("maskgit", tokenizer=str(tokenizer_run), data=str(image_folder), out=tmp_path / "cache",
                holdout=0.2)
    kw = dict(data=str(image_folder), preset="tiny", steps=2, batch_size=2, progress=False, holdout=0.2,
              tokenizer=str(tokenizer_run))
    cached = train(TrainConfig("maskgit", "model", out=str(tmp_path / "a"), token_cache=str(tmp_path / "cache"), **kw))
    assert all(r["loss"] > 0 for r in read_log(cached)) and len(read_log(cached)) == 2


def test_mqvae_positions_are_cached_and_come_out_int64(image_folder, tmp_path):
    common = dict(data=str(image_folder), steps=1, batch_size=2, progress=False, holdout=0.2)
    tok = train(TrainConfig("mqvae", "tokenizer", preset="tiny", out=str(tmp_path / "t"), **common))
    cache = TokenCache(write_cache("mqvae", tokenizer=str(tok), data=str(image_folder), out=tmp_path / "c",
                                   holdout=0.2))
    assert cache.rows["positions"].dtype == torch.int32 and cache.rows["tokens"].dtype == torch.int16
    batch = next(cache.batches(BatchPlan(len(cache), 2, seed=0), 0, 0, 1))
    assert all(v.dtype == torch.long for v in batch.values())
    run = train(TrainConfig("mqvae", "model", preset="tiny", out=str(tmp_path / "m"), tokenizer=str(tok),
                            token_cache=str(tmp_path / "c"), **common))
    assert len(read_log(run)) == 1
