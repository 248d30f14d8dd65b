"""`python -m vqfast demo` at smoke size: both stages train through the library trainer into
the cache, a second run loads them, a changed recipe retrains only what it changed."""
import json
import math

from vqfast import demo
from vqfast.train.log import read_log


def _run(cache, out, **kw):
    return demo.run(cache_dir=cache, out=out, seed=0, progress=False, **{"tokenizer_steps": 3,
                                                                           "transformer_steps": 4, **kw})


def test_demo_trains_through_the_trainer_then_loads_from_its_cache(tmp_path, capsys):
    cache, png = tmp_path / "cache", tmp_path / "demo.png"
    report = _run(cache, png)
    assert report["tokenizer_trained"] and report["transformer_trained"]
    assert (report["tokenizer_steps"], report["transformer_steps"]) == (3, 4)
    assert png.stat().st_size > 0
    for name, stage, steps in (("tokenizer", "tokenizer", 3), ("transformer", "model", 4)):
        config = json.loads((cache / name / "run.json").read_text())
        assert (config["family"], config["stage"], config["steps"]) == ("maskgit", stage, steps)
        assert config["preset"] == "tiny"
        log = read_log(cache / name)
        assert [r["step"] for r in log] == list(range(1, steps + 1))
        assert all(math.isfinite(r["loss"]) for r in log)
    assert json.loads((cache / "transformer" / "run.json").read_text())["token_cache"] == str(cache / "tokens")
    assert json.loads((cache / "tokens" / "index.json").read_text())["rows"] == 1024  # the bundled training crops
    assert report["fused_tok_s"] > 0 and report["reference_tok_s"] > 0
    printed = capsys.readouterr().out
    assert "training the tokenizer" in printed and f"wrote {png}" in printed

    png.unlink()
    again = _run(cache, png)
    assert not again["tokenizer_trained"] and not again["transformer_trained"]
    assert png.stat().st_size > 0
    assert "tokenizer loaded from" in capsys.readouterr().out
    assert [r["step"] for r in read_log(cache / "transformer")] == [1, 2, 3, 4]  # not trained again

    changed = _run(cache, png, transformer_steps=5)  # a stale transformer: only it is retrained
    assert not changed["tokenizer_trained"] and changed["transformer_steps"] == 5
    assert [r["step"] for r in read_log(cache / "transformer")] == [1, 2, 3, 4, 5]


def test_cache_dir_follows_the_demo_version(monkeypatch, tmp_path):
    monkeypatch.setenv("VQFAST_CACHE", str(tmp_path))
    assert demo.default_cache_dir() == tmp_path / f"demo-v{demo.DEMO_VERSION}"
