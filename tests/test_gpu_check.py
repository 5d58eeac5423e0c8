"""scripts/gpu_check.py, the one short GPU run of issue 18, checked on the CPU in tiny sizes (the full
``scripts/gpu_check.sh --cpu-dry-run`` runs every stage; here: the trainer stage, the time budget, the report)."""
import importlib.util
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_trainer_stage_measures_each_variant(gc, tmp_path):
    rows = gc.trainer_benchmarks("cpu", 8, 2, str(tmp_path), True, gc.Budget(600), variants=("conv", "adder"),
                                 amps=("off",))
    assert [(r["variant"], r["amp"]) for r in rows] == [("conv", "off"), ("adder", "off")]
    for r in rows:
        assert r["images_per_s"] > 0 and r["loss_finite"] and math.isfinite(r["final_train_loss"])
        assert r["timed_steps"] == 4  # epoch 2 of 2: 32 images in batches of 8
    assert rows[0]["vs_conv"] == 1.0 and rows[1]["vs_conv"] == rows[1]["images_per_s"] / rows[0]["images_per_s"]
    cd = gc.cross_device_check(rows, "cpu")
    assert cd["cpu"]["n"] == 200 and 0 <= cd["cpu"]["acc"] <= 1
    t = gc.targets([], [], rows)["resnet20_epoch_adder_vs_conv"]
    assert t["ratio"] == rows[1]["vs_conv"] and t["source"].startswith("shiftadd.train")
    report = {"env": {"torch": "x", "cuda": None, "triton": None, "python": "3"}, "command": "c", "batch": 4,
              "tests": {"command": "-", "returncode": None, "summary": "skipped"}, "layers": [], "network": [],
              "trained": rows, "cross_device": cd, "targets": {}, "skipped_stages": []}
    md = gc.markdown(report)
    assert "| adder | off |" in md and "evaluated on each device" in md


def test_a_spent_budget_skips_the_variants_and_says_so(gc, tmp_path):
    rows = gc.trainer_benchmarks("cpu", 4, 2, str(tmp_path), True, gc.Budget(0), variants=("conv",), amps=("off",))
    assert rows[0]["skipped"].startswith("time budget spent") and "images_per_s" not in rows[0]
    assert gc.cross_device_check(rows, "cpu") == {"skipped": "no trained run"}
