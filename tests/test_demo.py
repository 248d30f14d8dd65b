"""The demo's cache: checkpoints written by earlier versions (flat module paths, the recipe
as it was recorded) are found and loaded, not retrained."""
import json

import torch

from vqfast import checkpoint, demo
from vqfast.models.common.vqgan import VQGAN
from vqfast.models.maskgit import BidirectionalTransformer

# extra["recipe"] exactly as the demo wrote it before the models took presets
OLD_TOKENIZER_RECIPE = {"tokenizer": {"resolution": 32, "ch": 16, "ch_mult": [1, 2, 4], "num_res_blocks": 1,
                                      "codebook_size": 256, "embed_dim": 32}, "steps": 600, "seed": 0}
OLD_TRANSFORMER_CONFIG = {"codebook_size": 256, "seq_len": 64, "dim": 128, "depth": 4, "heads": 4,
                          "mlp_ratio": 4.0, "dropout": 0.0, "num_classes": 0}


def _rewrite(path, **fields):
    meta = path.with_name(path.name + ".json")
    record = json.loads(meta.read_text())
    record.update(fields)
    meta.write_text(json.dumps(record))


def test_cache_written_by_the_old_demo_is_loaded(tmp_path):
    vq = VQGAN.from_preset("tiny")
    checkpoint.save(vq, tmp_path / "tokenizer", extra={"recipe": OLD_TOKENIZER_RECIPE, "steps_run": 600})
    _rewrite(tmp_path / "tokenizer", **{"class": "vqfast.models.vqgan.VQGAN"})
    assert isinstance(demo.cached(tmp_path / "tokenizer", VQGAN, demo.tokenizer_recipe(600, 0)), VQGAN)
    assert demo.cached(tmp_path / "tokenizer", VQGAN, demo.tokenizer_recipe(601, 0)) is None  # another recipe

    torch.manual_seed(0)
    net = BidirectionalTransformer(**OLD_TRANSFORMER_CONFIG).eval()
    tok_extra = checkpoint.read_config(tmp_path / "tokenizer")["extra"]
    old_recipe = {"transformer": {"dim": 128, "depth": 4, "heads": 4}, "steps": 1500, "seed": 0, "tokenizer": tok_extra}
    checkpoint.save(net, tmp_path / "transformer", extra={"recipe": old_recipe, "steps_run": 1500})
    _rewrite(tmp_path / "transformer", config=OLD_TRANSFORMER_CONFIG,
             **{"class": "vqfast.models.transformer.BidirectionalTransformer"})
    back = demo.cached(tmp_path / "transformer", BidirectionalTransformer, demo.transformer_recipe(1500, 0, tok_extra))
    assert isinstance(back, BidirectionalTransformer)
    tokens = torch.randint(257, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(back(tokens), net(tokens))
    assert back.config["schedule"] == "cosine" and back.config["label_smoothing"] == 0.1  # the old MVTM defaults
