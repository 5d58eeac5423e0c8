"""The trainer's translation task: training, exact resume, BLEU evaluation, `shiftadd translate` / `eval`."""
import gzip
import json

import pytest
import torch

pytest.importorskip("sentencepiece")
pytest.importorskip("sacrebleu")

from shiftadd.cli import main  # noqa: E402
from shiftadd.train import checkpoint as ckpt  # noqa: E402
from shiftadd.train.build import step_lr_factor  # noqa: E402
from shiftadd.train.config import make_config  # noqa: E402
from shiftadd.train.loop import train  # noqa: E402
from shiftadd.train.task import get_task  # noqa: E402

EN = ["a dog runs in the park .", "two men play football .", "a woman reads a book .", "the cat sleeps .",
      "a child eats an apple .", "people walk on the street .", "a man rides a bike .", "the girl sings ."]
DE = ["ein hund rennt im park .", "zwei männer spielen fußball .", "eine frau liest ein buch .",
      "die katze schläft .", "ein kind isst einen apfel .", "leute gehen auf der straße .",
      "ein mann fährt ein fahrrad .", "das mädchen singt ."]
TINY = {"preset": "transformer", "layers": 1, "embed_dim": 16, "ffn_dim": 32, "heads": 2, "max_positions": 64}


@pytest.fixture()
def corpus(tmp_path, monkeypatch):
    """A Multi30k-layout folder (train x4 of the sentences, val/test the sentences) and a private cache."""
    monkeypatch.setenv("SHIFTADD_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "m30k"
    folder.mkdir()
    for stem, reps in (("train", 4), ("val", 1), ("test_2016_flickr", 1)):
        for lang, lines in (("en", EN), ("de", DE)):
            with gzip.open(folder / f"{stem}.{lang}.gz", "wt", encoding="utf-8") as f:
                f.write("\n".join(lines * reps) + "\n")
    return folder


def _config(corpus, **kw):
    values = dict(task="translation", data_dir=str(corpus), model_options=dict(TINY), vocab_size=60,
                  max_tokens=40, epochs=2, warmup_steps=4, lr=3e-3, seed=3, progress=False, beam=2, threads=1)
    values.update(kw)
    return make_config(None, values)


def test_default_recipe_of_the_translation_task(corpus):
    config = _config(corpus)
    assert config.recipe == "transformer"
    assert (config.optimizer, config.schedule, config.adam_betas) == ("adam", "inverse_sqrt", [0.9, 0.98])
    assert config.label_smoothing == 0.1
    with pytest.raises(Exception, match="multi30k"):
        _config(corpus, dataset="cifar10")


def test_inverse_sqrt_steps_in_the_loop(corpus, tmp_path):
    res = train(_config(corpus, epochs=1), str(tmp_path / "run"), log=lambda *_: None)
    steps = len(get_task("translation").loader(get_task("translation").load(res.config).train, res.config, 1, 3,
                                                shuffle=True))
    # the learning rate of the last step of epoch 1 follows the per-step schedule, not the epoch
    assert res.history[0]["lr"] == pytest.approx(3e-3 * step_lr_factor(res.config, steps - 1))
    assert res.history[0]["tokens_per_second"] > 0
    assert "val_bleu" in res.history[0] and 0 <= res.history[0]["val_bleu"] <= 100


def test_translation_training_resumes_exactly(corpus, tmp_path):
    full = train(_config(corpus), str(tmp_path / "full"), log=lambda *_: None)
    part = tmp_path / "part"
    train(_config(corpus, epochs=1), str(part), log=lambda *_: None)
    resumed = train(_config(corpus, epochs=2), str(part), resume=True, log=lambda *_: None)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [h["train_loss"] for h in full.history] == [h["train_loss"] for h in resumed.history]
    assert full.results["best"]["test_bleu"] == resumed.results["best"]["test_bleu"]
    # the final test is translated once with the beam; the results name the best-validation epoch
    results = json.loads((part / "results.json").read_text())
    assert results["best"]["epoch"] in (1, 2) and "val_bleu" in results["best"]


def test_nan_guard_stops_translation(corpus, tmp_path):
    from shiftadd.train.loop import TrainingDiverged

    with pytest.raises(TrainingDiverged, match="diverged"):
        train(_config(corpus, max_loss=1e-3), str(tmp_path / "run"), log=lambda *_: None)


def test_cli_train_translate_and_eval(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    opts = [f"-O{k}={v}" for k, v in TINY.items()]
    argv = ["train", "--task", "translation", "--model", "transformer-seq", *opts, "--data-dir", str(corpus),
            "--epochs", "1", "--no-progress", "--out", str(run), "--threads", "1"]
    assert main(argv + ["--vocab-size", "60", "--max-tokens", "40", "--warmup-steps", "4", "--beam", "2"]) == 0
    out = capsys.readouterr().out
    assert "test BLEU" in out
    meta = ckpt.load_checkpoint_meta(str(run))
    assert meta["dataset"]["src_lang"] == "en" and meta["dataset"]["subword_model"]

    src = tmp_path / "in.txt"
    src.write_text("a dog runs .\n\nthe cat sleeps .\n", encoding="utf-8")
    assert main(["translate", "--checkpoint", str(run), "--beam", "2", str(src)]) == 0
    lines = capsys.readouterr().out.split("\n")
    assert len(lines) == 4 and lines[1] == "" and lines[3] == ""  # one line per input line, empty stays empty

    assert main(["eval", "--checkpoint", str(run), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["split"] == "test" and res["beam"] == 2 and res["n"] == len(EN) and 0 <= res["bleu"] <= 100
    assert main(["eval", "--checkpoint", str(run), "--split", "val", "--json"]) == 0
    res_val = json.loads(capsys.readouterr().out)
    assert res_val["split"] == "val" and res_val["beam"] == 1


def test_eval_bleu_equals_sacrebleu_of_the_translations(corpus, tmp_path, capsys):
    import sacrebleu

    from shiftadd.train.translation import evaluate_translation_run, translate_lines

    res = train(_config(corpus, epochs=1), str(tmp_path / "run"), log=lambda *_: None)
    got = evaluate_translation_run(str(tmp_path / "run"), "test", beam=2, device="cpu")
    hyps = translate_lines(str(tmp_path / "run"), EN, beam=2, length_penalty=res.config.length_penalty)
    assert got["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [DE]).score)


def test_translate_and_eval_errors(corpus, tmp_path, capsys):
    assert main(["translate", "--checkpoint", str(tmp_path / "missing")]) == 2
    assert "error" in capsys.readouterr().err
    run = tmp_path / "run"
    train(_config(corpus, epochs=1), str(run), log=lambda *_: None)
    assert main(["translate", "--checkpoint", str(run), str(tmp_path / "nope.txt")]) == 2
    err = capsys.readouterr().err
    assert "nope.txt" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exc:  # argparse: one line, exit 2
        main(["translate", "--checkpoint", str(run), "--beam", "0", str(tmp_path / "nope.txt")])
    assert exc.value.code == 2
    assert main(["eval", "--checkpoint", str(run), "--split", "train"]) == 2
