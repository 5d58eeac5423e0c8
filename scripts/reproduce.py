"""Reproduce the papers' CIFAR-10 / MNIST accuracy tables on a CPU (docs/results.md, issue 17).

Every run is an ordinary ``shiftadd train`` command with a held-out validation slice of the training
set (``--val-split``): model selection looks at validation accuracy only, and the test split is
evaluated once, when a run has finished. Runs live in ``results/runs/<name>`` (tracked in git: a
ResNet-20 checkpoint is ~2 MB), so a run that outlives a session is committed and resumed by the next:

    python scripts/reproduce.py run --jobs 2 [--only r20-conv,r20-adder] [--hours 2.5]
    python scripts/reproduce.py status

``--hours`` stops every run cleanly (between epochs, via the trainer's exact resume) after that
much wall time, so a session can commit the checkpoints before it ends. ``publish`` turns finished
runs into pretrained weights with model cards (``shiftadd/weights``).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "results" / "runs"
DATA = ROOT.parent / "shared" / "data"
CIFAR = ["--dataset", "cifar10", "--data-dir", str(DATA / "cifar10-jpeg.tar.gz"), "--val-split", "5000",
         "--recipe", "cifar-fast", "--seed", "0"]
MNIST = ["--dataset", "mnist", "--data-dir", str(DATA / "mnist10k.npz"), "--val-split", "1000", "--seed", "0"]

#: name -> (what it reproduces, shiftadd train arguments). Epochs: 1/4 of the papers' (ResNet-20: 160
#: epochs for conv/DeepShift/ShiftAddNet, 400 for AdderNet).
JOBS: Dict[str, Tuple[str, List[str]]] = {
    "r20-conv": ("ResNet-20 conv, paper 91.79 %", CIFAR + ["--model", "resnet20", "--op", "conv", "--epochs", "40"]),
    "r20-shift-ps": ("ResNet-20 DeepShift-PS, paper 88.84 %",
                     CIFAR + ["--model", "resnet20", "--op", "shift-ps", "--epochs", "40", "--shift-lr", "30"]),
    "r20-shiftadd": ("ResNet-20 ShiftAddNet, paper 89.32 %",
                     CIFAR + ["--model", "resnet20", "--op", "shiftadd", "--epochs", "40"]),
    "r20-adder": ("ResNet-20 AdderNet, paper 92.02 %", CIFAR + ["--model", "resnet20", "--op", "adder", "--epochs", "100"]),
}
#: DeepShift's MNIST table (train from scratch, full MNIST): every layer converted, 5-bit shifts, its recipe
#: (lr 0.01, batch 64); 20 epochs of the shared 10k digits. PS: DeepShift's RAdam or SGD with a shift/sign learning
#: rate of 30, whichever was better on validation for the model (docs/results.md): SGD for the MLP, RAdam for the CNN.
_DEEPSHIFT_MNIST = {"mnist-mlp": ("simple FC", {"conv": 96.92, "shift-q": 97.03, "shift-ps": 98.26}, ["--shift-lr", "30"]),
                    "mnist-cnn": ("simple conv", {"conv": 98.75, "shift-q": 98.81, "shift-ps": 99.12},
                                  ["--optimizer", "radam"])}
for _model, (_what, _paper, _ps_args) in _DEEPSHIFT_MNIST.items():
    for _op, _acc in _paper.items():
        JOBS[f"{_model}-{_op}"] = (
            f"DeepShift {_what} model, {_op}, paper {_acc} % (full MNIST)",
            MNIST + ["--model", _model, "--op", _op, "-O", "keep_first_last=false", "--recipe", "deepshift",
                     "--lr", "0.01", "--epochs", "20", "--batch-size", "64"]
            + (_ps_args if _op == "shift-ps" else []))


def state(run: Path) -> Optional[dict]:
    meta = run / "checkpoint.json"
    return json.loads(meta.read_text()) if meta.is_file() else None


def finished(run: Path) -> bool:
    m = state(run)
    return bool(m) and m["epoch"] >= m["config"]["epochs"]


def run_one(name: str, args: List[str], deadline: float) -> Tuple[str, str]:
    run = RUNS / name
    logs = run / "logs"
    if finished(run):
        return name, "finished"
    common = ["--threads", "1", "--no-progress"]
    if state(run):
        argv = ["--resume", str(run), "--data-dir", args[args.index("--data-dir") + 1]] + common
    else:
        argv = args + ["--out", str(run)] + common
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{time.strftime('%Y%m%d-%H%M%S')}.log"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with open(log, "w") as fh:
        fh.write(" ".join(["shiftadd", "train", *argv]) + "\n")
        fh.flush()
        # SIGINT back to its default in the child: a script started with `&` / nohup has it ignored, and
        # Python then never raises KeyboardInterrupt, so the stop below would be lost
        proc = subprocess.Popen([sys.executable, "-m", "shiftadd.cli", "train", *argv], stdout=fh,
                                stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        while proc.poll() is None:
            if time.time() > deadline:  # SIGINT: the trainer keeps the last complete epoch's checkpoint
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:  # checkpoints are atomic: at most the running epoch is lost
                    proc.terminate()
                    proc.wait()
                return name, "stopped at the time limit"
            time.sleep(5)
    return name, "finished" if finished(run) else f"exit {proc.returncode} (see {log})"


def cmd_run(a: argparse.Namespace) -> None:
    names = a.only.split(",") if a.only else list(JOBS)
    unknown = [n for n in names if n not in JOBS]
    if unknown:
        sys.exit(f"unknown run(s) {unknown}; known: {', '.join(JOBS)}")
    deadline = time.time() + a.hours * 3600
    with ThreadPoolExecutor(a.jobs) as pool:
        for name, result in pool.map(lambda n: run_one(n, JOBS[n][1], deadline), names):
            print(f"{name}: {result}", flush=True)


def progress_table() -> str:
    """The docs/results.md progress table (validation accuracy by epoch), from the runs' metrics; empty
    when no run is in progress."""
    rows = ["| run | epochs done / planned | val acc by epoch (%) | best val | train time so far |",
            "|---|---|---|---:|---:|"]
    for name in JOBS:
        m = state(RUNS / name)
        if not m or (RUNS / name / "results.json").is_file():
            continue
        hist = [json.loads(line) for line in (RUNS / name / "metrics.jsonl").read_text().splitlines() if line.strip()]
        vals = [100 * h["val_acc"] for h in hist if "val_acc" in h]
        hours = sum(h.get("seconds", 0.0) for h in hist) / 3600
        rows.append(f"| {name} | {m['epoch']} / {m['config']['epochs']} | {', '.join(f'{v:.1f}' for v in vals)} | "
                    f"{max(vals):.2f} | {hours:.1f} h |")
    return "\n".join(rows) if len(rows) > 2 else ""


def results_table() -> str:
    """Markdown table of the finished runs: the best-validation model's test accuracy (measured once)."""
    rows = ["| run | reproduces | best val (epoch) | **test** (best-val model) | test images | epochs | train time |",
            "|---|---|---:|---:|---:|---:|---:|"]
    for name, (what, _) in JOBS.items():
        path = RUNS / name / "results.json"
        if not path.is_file():
            continue
        best = json.loads(path.read_text())["best"]
        hist = [json.loads(line) for line in (RUNS / name / "metrics.jsonl").read_text().splitlines() if line.strip()]
        hours = sum(h.get("seconds", 0.0) for h in hist) / 3600
        rows.append(f"| {name} | {what} | {100 * best['val_acc']:.2f} ({best['epoch']}) | **{100 * best['test_acc']:.2f}** | "
                    f"{best['test_images']} | {state(RUNS / name)['epoch']} | {hours:.2f} h |")
    return "\n".join(rows)


def cmd_status(a: argparse.Namespace) -> None:
    if a.markdown:
        training = progress_table()
        print("Finished:\n\n" + results_table() + (f"\n\nTraining:\n\n{training}" if training else ""))
        return
    for name, (what, args) in JOBS.items():
        m = state(RUNS / name)
        if not m:
            print(f"{name:<14} not started   ({what})")
            continue
        hist = m.get("history", [])
        last = hist[-1] if hist else {}
        val = last.get("val_acc", last.get("test_acc"))
        print(f"{name:<14} epoch {m['epoch']:>3}/{m['config']['epochs']:<3} last val acc "
              f"{val if val is None else round(100 * val, 2)}   ({what})")


def publish_one(name: str, out_dir: Path) -> str:
    """Turn a finished run's best-validation model into pretrained weights + a model card in ``out_dir``."""
    from shiftadd import __version__
    from shiftadd.energy import count_ops
    from shiftadd.energy.profile import evaluate as energy_of
    from shiftadd.models.pretrained import ModelCard, save_pretrained
    from shiftadd.nn.families import get_family
    from shiftadd.train.runs import best_checkpoint_path, embedded_check, load_trained_model, shared_scale_sweep

    run = RUNS / name
    results_path = run / "results.json"
    if "cifar10" not in JOBS[name][1]:  # a card's check is re-measured on the embedded CIFAR-10 test images
        return "not published (only CIFAR-10 models have an embedded test set for their card's check)"
    if not finished(run) or not results_path.is_file():
        return "not finished (no results.json)"
    best = json.loads(results_path.read_text())["best"]
    model, config, _ = load_trained_model(best_checkpoint_path(str(run)))
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    logs = sorted((run / "logs").glob("*.log"))
    command = logs[0].read_text().splitlines()[0] if logs else None
    check, images = embedded_check(model, config)  # re-measurable without a download (model card "check")
    energy = energy_of(count_ops(model, (1, *images.shape[1:])), "asic45nm", "fp32", training=False)
    int8 = None  # the AdderNet hardware paper's shared-scale 8-bit adder layers, on the whole test split
    if get_family(config.op).has_adder:
        int8 = shared_scale_sweep(best_checkpoint_path(str(run)), bits=(8,))["int8"]
    card = ModelCard(
        name=f"{config.model}-{config.op}-{config.dataset}", model=config.model, op=config.op, num_classes=10,
        dataset=config.dataset, sha256="", model_options=dict(config.model_options), recipe=config.recipe,
        command=command, epochs=float(best["epoch"]), wall_time_s=round(sum(h.get("seconds", 0.0) for h in history), 1),
        val_acc=best["val_acc"], test_acc=best["test_acc"], test_images=best["test_images"],
        check={"dataset": "embedded", "images": check["n"], "acc": check["acc"]},
        energy_uj_per_image=round(energy.total_pj / 1e6, 3), energy_setting="asic45nm fp32 inference",
        int8_test_acc=int8,
        date=time.strftime("%Y-%m-%d"),
        notes=(f"best-validation epoch {best['epoch']} of {config.epochs} (validation: {config.val_split} held-out training images); "
               f"test split evaluated once; shiftadd {__version__}; {JOBS[name][0]}"))
    save_pretrained(model, str(out_dir), card, reference_input=images[:4], reference_desc="embedded test images 0-3")
    return f"published {card.name}: test {100 * card.test_acc:.2f} %, embedded check {100 * check['acc']:.2f} %"


def cmd_publish(a: argparse.Namespace) -> None:
    out = Path(a.out)
    for name in (a.only.split(",") if a.only else list(JOBS)):
        print(f"{name}: {publish_one(name, out)}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="start or resume runs, N at a time, one thread each")
    r.add_argument("--jobs", type=int, default=2)
    r.add_argument("--only", default="")
    r.add_argument("--hours", type=float, default=1e6, help="stop cleanly after this much wall time")
    r.set_defaults(fn=cmd_run)
    pub = sub.add_parser("publish", help="finished runs -> pretrained weights + model cards")
    pub.add_argument("--only", default="")
    pub.add_argument("--out", default=str(ROOT / "shiftadd" / "weights"))
    pub.set_defaults(fn=cmd_publish)
    s = sub.add_parser("status", help="epochs done and last validation accuracy of each run")
    s.add_argument("--markdown", action="store_true", help="the progress table of docs/results.md")
    s.set_defaults(fn=cmd_status)
    a = p.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
