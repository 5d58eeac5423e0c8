"""Validation split (``val_split``): held-out training images for per-epoch evaluation and model selection,
the test split evaluated once at the end; the best-validation checkpoint and ``shiftadd eval --best``."""
import json

import pytest
import torch

from shiftadd.cli import main
from shiftadd.errors import UserError
from shiftadd.train import ClassificationTask, evaluate_checkpoint, load_checkpoint, make_config, split_validation, train


@pytest.fixture(scope="module")
def tiny_data():
    from shiftadd.data import load_dataset

    tr, te = load_dataset("embedded", subset=96, seed=0)
    return tr, te.subset(torch.arange(0, len(te), 10))  # 100 test images, all classes


def _quiet(_msg):
    pass


def _cfg(**kw):
    base = dict(model="mnist-mlp", op="shift-ps", dataset="embedded", subset=96, epochs=4, batch_size=16,
                test_batch_size=50, augment=True, progress=False, threads=1, model_options={"hidden": 32},
                milestones=[0.5], val_split=30)
    base.update(kw)
    return make_config("deepshift", **base)


class _Stop(Exception):
    pass


def test_the_validation_slice_is_disjoint_class_balanced_and_fixed_by_the_seed(tiny_data):
    tr = tiny_data[0]
    rest, val = split_validation(tr, 30, seed=0)
    assert len(val.labels) == 30 and len(rest.labels) == len(tr.labels) - 30
    counts = val.class_counts()
    assert max(counts) - min(counts) <= 1  # 30 images over 10 classes: 3 each
    # a partition: every training image (with its label) is in exactly one of the two parts
    rows = lambda *parts: sorted(tuple(x.flatten().tolist()) + (int(y),) for p in parts
                                 for x, y in zip(p.images, p.labels))
    assert rows(rest, val) == rows(tr)
    assert not set(rows(rest)) & set(rows(val)) or len(set(rows(tr))) < len(tr.labels)
    again_rest, again_val = split_validation(tr, 30, seed=0)
    assert torch.equal(again_val.images, val.images) and torch.equal(again_rest.labels, rest.labels)
    other = split_validation(tr, 30, seed=1)[1]
    assert not torch.equal(other.images, val.images)
    with pytest.raises(UserError, match="val_split=96 must be smaller"):
        split_validation(tr, 96, seed=0)
    with pytest.raises(UserError, match="val_split must be >= 1"):
        _cfg(val_split=0)


def test_with_val_split_the_test_split_is_evaluated_only_after_training(tmp_path, tiny_data):
    test_ds = tiny_data[1]
    calls = []  # (split, epochs finished when evaluated)
    epochs_done = [0]

    class Spy(ClassificationTask):
        def evaluate(self, model, loader, *args, **kwargs):
            calls.append(("test" if loader.dataset is test_ds else "other", epochs_done[0]))
            return super().evaluate(model, loader, *args, **kwargs)

    def count(msg):
        if msg.startswith("epoch "):
            epochs_done[0] += 1

    res = train(_cfg(), str(tmp_path / "run"), data=tiny_data, log=count, task=Spy())
    per_epoch = [c for c in calls if c[0] == "other"]
    test_calls = [c for c in calls if c[0] == "test"]
    assert [e for _, e in per_epoch] == [0, 1, 2, 3]  # validation after every epoch
    assert test_calls and all(e == 4 for _, e in test_calls)  # the test split only once training is over
    assert len(test_calls) == (1 if res.results["best"]["epoch"] == 4 else 2)
    assert all("val_acc" in h and "test_acc" not in h for h in res.history)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved == json.loads(json.dumps(res.results))
    assert saved["final"]["epoch"] == 4 and saved["final"]["test_images"] == len(test_ds.labels)


def test_the_best_checkpoint_is_the_epoch_with_the_highest_validation_accuracy(tmp_path, tiny_data):
    run = tmp_path / "run"
    res = train(_cfg(lr=0.3), str(run), data=tiny_data, log=_quiet)
    accs = [h["val_acc"] for h in res.history]
    best_epoch = accs.index(max(accs)) + 1
    best = load_checkpoint(str(run / "best"))
    assert best.epoch == best_epoch == res.results["best"]["epoch"]
    assert res.results["best"]["val_acc"] == max(accs)
    assert best.optimizer_state is None  # weights only: the latest checkpoint is the one to resume
    # the test accuracies reported at the end are those of the two saved models
    assert evaluate_checkpoint(str(run / "best"), data=tiny_data)["acc"] == pytest.approx(res.results["best"]["test_acc"])
    assert evaluate_checkpoint(str(run), data=tiny_data)["acc"] == pytest.approx(res.results["final"]["test_acc"])
    # the held-out images are not part of the training set the checkpoint describes
    assert best.meta["dataset"]["train_size"] == 96 - 30 and best.meta["dataset"]["val_size"] == 30


def test_resume_with_val_split_matches_an_uninterrupted_run(tmp_path, tiny_data):
    full = train(_cfg(lr=0.3), str(tmp_path / "full"), data=tiny_data, log=_quiet)

    def stop_after_two(msg):
        if msg.startswith("epoch 2/4"):
            raise _Stop()

    with pytest.raises(_Stop):
        train(_cfg(lr=0.3), str(tmp_path / "cut"), data=tiny_data, log=stop_after_two)
    resumed = train(_cfg(lr=0.3), str(tmp_path / "cut"), resume=True, data=tiny_data, log=_quiet)
    # same held-out slice and training images on both sides of the cut: identical numbers
    assert resumed.history == [dict(h, seconds=r["seconds"], train_seconds=r["train_seconds"],
                                    images_per_second=r["images_per_second"])
                               for h, r in zip(full.history, resumed.history)]
    assert resumed.results == full.results
    a, b = load_checkpoint(str(tmp_path / "full" / "best")), load_checkpoint(str(tmp_path / "cut" / "best"))
    assert a.epoch == b.epoch and all(torch.equal(a.model_state[k], b.model_state[k]) for k in a.model_state)


def test_a_run_interrupted_during_its_final_test_resumes_into_just_that_test(tmp_path, tiny_data):
    full = train(_cfg(lr=0.3), str(tmp_path / "full"), data=tiny_data, log=_quiet)
    test_ds = tiny_data[1]

    class DiesInTheFinalTest(ClassificationTask):
        def evaluate(self, model, loader, *args, **kwargs):
            if loader.dataset is test_ds:
                raise _Stop()
            return super().evaluate(model, loader, *args, **kwargs)

    with pytest.raises(_Stop):
        train(_cfg(lr=0.3), str(tmp_path / "cut"), data=tiny_data, log=_quiet, task=DiesInTheFinalTest())
    assert load_checkpoint(str(tmp_path / "cut")).epoch == 4 and not (tmp_path / "cut" / "results.json").exists()
    said = []
    resumed = train(_cfg(lr=0.3), str(tmp_path / "cut"), resume=True, data=tiny_data, log=said.append)
    assert not any(m.startswith("epoch ") for m in said)  # no epoch trained again
    assert resumed.results == full.results and len(resumed.history) == 4
    with pytest.raises(UserError, match="already finished"):  # now it is complete
        train(_cfg(lr=0.3), str(tmp_path / "cut"), resume=True, data=tiny_data, log=_quiet)


def test_eval_best_through_the_cli(tmp_path, tiny_data, capsys):
    run = tmp_path / "run"
    res = train(_cfg(lr=0.3), str(run), data=tiny_data, log=_quiet)
    code = main(["eval", "--checkpoint", str(run), "--best", "--json", "--device", "cpu", "--threads", "1",
                 "--test-subset", "100"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["epoch"] == res.results["best"]["epoch"]
    plain = tmp_path / "plain"
    train(_cfg(val_split=None, epochs=1), str(plain), data=tiny_data, log=_quiet)
    code = main(["eval", "--checkpoint", str(plain), "--best"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--val-split" in err
