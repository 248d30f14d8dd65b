"""`python -m vqfast train` end to end per family at its tiny preset (stage 1, then stage 2 on
the trained tokenizer) from a folder with a corrupt and a grayscale image, each run scored by
`python -m vqfast eval`; VQ-DDM's ReFiT stage; `--help`; errors."""
import json

import pytest
import torch

from vqfast.__main__ import main
from vqfast.train.checkpointing import latest
from vqfast.train.log import read_log

# (family, tokenizer preset, model preset): class-conditional presets read the folder's 2 classes
FAMILIES = [("maskgit", "tiny", "tiny"), ("put", "tiny", "tiny"), ("mqvae", "tiny", "tiny-cond"),
            ("rq", "tiny", "tiny-cond"), ("vqddm", "tiny", "tiny")]


def cli(*args):
    main(["train", *args, "--steps", "2", "--batch-size", "2", "--no-progress", "--holdout", "0.2"])


@pytest.mark.parametrize("family, tok_preset, model_preset", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_both_stages_train_from_a_folder(image_folder, tmp_path, family, tok_preset, model_preset):
    tok = tmp_path / "tok"
    cli(family, "--stage", "tokenizer", "--data", str(image_folder), "--preset", tok_preset, "--out", str(tok))
    model = tmp_path / "model"
    figures = [] if family == "vqddm" else ["--eval-every", "2"]  # VQ-DDM samples with all T steps: slow
    cli(family, "--stage", "model", "--data", str(image_folder), "--preset", model_preset, "--out", str(model),
        "--tokenizer", str(tok), *figures)
    assert (model / "samples.png").exists() == bool(figures)
    for run in (tok, model):
        records = read_log(run)
        assert [r["step"] for r in records] == [1, 2] and all(r["loss"] == r["loss"] for r in records)
        assert (latest(run) / "model.safetensors").exists()
        main(["eval", str(run), "--max-images", "2", "--batch-size", "2", "--sample-steps", "4"])
        report = json.loads((run / "metrics.json").read_text())
        assert 0 < report["codebook_usage"] <= 1  # of the reconstructions' or the samples' tokens
        scored = run == tok or family == "put"  # PUT's model is scored on its inpainting
        assert ("psnr" in report) == scored and ("ssim" in report) == scored
        assert ("lpips_skipped" in report) == scored  # no --lpips-weights: the how-to instead
        assert ("is_skipped" in report) == (run == model and "cond" in model_preset)


def test_help_lists_presets(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    from vqfast.models.common.vqgan import VQGAN
    assert "--tokenizer" in out and f"maskgit  tokenizer  {', '.join(sorted(VQGAN.PRESETS))}" in out
    assert all(opt in out for opt in ("--perceptual-weights", "--adversarial, --no-adversarial", "--disc-start"))
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = capsys.readouterr().out
    assert "--lpips-weights" in out and "IS of class-conditional" in out


def test_empty_folder_fails_before_training(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        cli("maskgit", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "run"))
    assert not (tmp_path / "run" / "log.jsonl").exists()


def test_vqddm_refit_stage_keeps_the_encoder(image_folder, tmp_path):
    from vqfast import checkpoint
    from vqfast.train.checkpointing import model_path
    tok = tmp_path / "tok"
    cli("vqddm", "--stage", "tokenizer", "--data", str(image_folder), "--out", str(tok))
    refit = tmp_path / "refit"
    cli("vqddm", "--stage", "refit", "--data", str(image_folder), "--out", str(refit), "--tokenizer", str(tok))
    before, after = (checkpoint.load(model_path(r)).state_dict() for r in (tok, refit))
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("encoder.", "quant_conv.")))
    assert not torch.equal(before["quantizer.codebook_state.embed"], after["quantizer.codebook_state.embed"])
    assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))


def test_resume_run_dir_takes_the_runs_settings_and_continues_exactly(image_folder, tmp_path):
    from vqfast.train.checkpointing import read_weights
    recipe = ("maskgit", "--data", str(image_folder), "--steps", "3", "--batch-size", "3", "--seed", "4",
              "--grad-accum", "2", "--lr", "3e-4", "--no-progress")
    main(["train", *recipe, "--out", str(tmp_path / "straight")])
    main(["train", *recipe, "--out", str(tmp_path / "resumed"), "--stop-after", "1"])
    main(["train", "maskgit", "--resume", str(tmp_path / "resumed"), "--no-progress"])  # nothing else given
    assert [r["step"] for r in read_log(tmp_path / "resumed")] == [1, 2, 3]
    a, b = (read_weights(latest(tmp_path / r)) for r in ("straight", "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_other_settings_another_family_and_a_shorter_run(image_folder, tmp_path):
    run = tmp_path / "run"
    main(["train", "maskgit", "--data", str(image_folder), "--steps", "2", "--batch-size", "2", "--no-progress",
          "--out", str(run)])
    again = ["train", "maskgit", "--resume", str(run), "--no-progress"]
    for extra, message in [(["--batch-size", "3"], r"batch_size=3 \(the run's: 2\)"),
                           (["--preset", "64px"], r"preset='64px' \(the run's: 'tiny'\)"),
                           (["--precision", "bf16", "--seed", "1"], r"precision='bf16'.*seed=1"),
                           (["--steps", "1"], "at step 2, past steps=1"),
                           (["--out", str(tmp_path / "other")], "name different run folders")]:
        with pytest.raises(ValueError, match=message):
            main([*again, *extra])
    with pytest.raises(ValueError, match="is a maskgit run, not put"):
        main(["train", "put", "--resume", str(run)])
    with pytest.raises(ValueError, match="--out RUN_DIR is required"):
        main(["train", "maskgit", "--steps", "2"])
    assert [r["step"] for r in read_log(run)] == [1, 2]  # nothing trained, nothing lost
