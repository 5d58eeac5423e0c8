"""ShiftAddNAS for CNNs on CIFAR-10 at a CPU budget: the pipeline behind the results part of docs/nas.md.

Stages (each is skipped when its output exists, an interrupted training or search resumes):

1. ``supernet``: one supernet per weight-sharing mode (``shiftadd nas supernet``), on the training set
   minus a class-balanced validation slice;
2. ``ranking``: ``--num-archs`` random architectures trained stand-alone (validation accuracy) against
   their supernet-inherited validation accuracy, per mode: Kendall tau, supernet parameter counts, and
   histograms of the heterogeneous supernet's remapped adder weights against a Laplace fit;
3. ``search``: evolutionary search of the heterogeneous supernet at each energy budget;
4. ``retrain``: the found architectures and the all-conv / all-adder / all-shift-ps / all-shiftadd
   ResNets trained from scratch with the same budget on the same images, watched on the validation
   slice, the last epoch's model tested once on the test set;
5. ``report``: ``results.json``, ``acc_vs_energy.png`` and the wall time of every stage.

    python scripts/nas_cnn_experiments.py --out runs/nas --data-dir /work/shared/data/cifar10-jpeg.tar.gz \\
        --subset 10000 --supernet-epochs 30 --standalone-epochs 10 --retrain-epochs 30

A toy run (seconds): ``--dataset embedded --subset 300 --val-size 100 --depth 8 --base-width 4 --num-archs 4
--supernet-epochs 1 --standalone-epochs 1 --retrain-epochs 1 --population 6 --generations 2``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline_folder import PipelineFolder  # noqa: E402
from shiftadd.data import load_dataset  # noqa: E402
from shiftadd.nas import (Architecture, EnergyLookup, EvolutionConfig, SearchSpace,  # noqa: E402
                          SubnetScorer, evolutionary_search, validation_split)
from shiftadd.nas.sharing import laplace_density, laplace_fit  # noqa: E402
from shiftadd.train import make_config, train  # noqa: E402

BASELINES = ("conv", "adder", "shift-ps", "shiftadd")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/nas")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--subset", type=int, default=None, help="class-balanced subset of the training set")
    p.add_argument("--test-subset", type=int, default=None, help="class-balanced subset of the test set")
    p.add_argument("--val-size", type=int, default=2000, help="training images held out for scoring")
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--base-width", type=int, default=16)
    p.add_argument("--ops", default="conv,adder,shift-ps,shiftadd")
    p.add_argument("--widths", default="0.5,0.75,1.0")
    p.add_argument("--modes", default="separate,shared,heterogeneous")
    p.add_argument("--reg-weight", type=float, default=0.05)
    p.add_argument("--sandwich", action="store_true")
    p.add_argument("--attention", action="store_true", help="attention choice in the last stage's stride-1 blocks")
    p.add_argument("--supernet-epochs", type=int, default=30)
    p.add_argument("--standalone-epochs", type=int, default=10, help="epochs of each ranking architecture")
    p.add_argument("--retrain-epochs", type=int, default=30, help="epochs of found and baseline networks")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--shift-lr", type=float, default=None,
                   help="learning rate of the DeepShift-PS shift/sign parameters (default: --lr; issue 17 uses 30)")
    p.add_argument("--num-archs", type=int, default=8, help="architectures of the ranking study (>= 8)")
    p.add_argument("--budget-fractions", default="0.3,0.5",
                   help="energy budgets as fractions of the all-conv network's energy")
    p.add_argument("--platform", default="asic45nm")
    p.add_argument("--format", dest="fmt", default="fp32")
    p.add_argument("--population", type=int, default=50)
    p.add_argument("--parents", type=int, default=10)
    p.add_argument("--mutations", type=int, default=None, help="default: population / 2")
    p.add_argument("--crossovers", type=int, default=None, help="default: population / 2")
    p.add_argument("--generations", type=int, default=20)
    p.add_argument("--val-images", type=int, default=None, help="score candidates on this many validation images")
    p.add_argument("--recal-images", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--retrain-name", default="retrain",
                   help="folder under --out of the retrained networks; a second name retrains the same architectures "
                        "with other settings (e.g. --shift-lr) and reports into results-NAME.json / acc_vs_energy-NAME.png")
    p.add_argument("--retrain-only", default=None,
                   help="comma-separated subset of the retrained networks (all-conv, ..., found-57.7uJ as named in "
                        "the retrain folder); default: all")
    p.add_argument("--stages", default="supernet,ranking,search,retrain,report")
    return p.parse_args(argv)


class Pipeline(PipelineFolder):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args.out)
        self.args = args
        if args.threads:
            torch.set_num_threads(args.threads)
        self.space = SearchSpace(args.depth, tuple(args.ops.split(",")),
                                 tuple(float(w) for w in args.widths.split(",")), args.base_width, args.attention)
        self.modes = [m for m in args.modes.split(",") if m]
        train_set, self.test = load_dataset(args.dataset, data_dir=args.data_dir, subset=args.subset, seed=args.seed)
        if args.test_subset is not None and args.test_subset < len(self.test):
            self.test = self.test.balanced_subset(args.test_subset, args.seed)
        self.train_full = train_set
        self.train_part, self.val = validation_split(train_set, args.val_size, args.seed)
        self.image_size = int(train_set.images.shape[-1])
        self.lookup = EnergyLookup.cached(str(self.out / f"energy-{args.platform}-{args.fmt}.json"), self.space,
                                          args.platform, args.fmt, "sram", self.image_size,
                                          int(train_set.images.shape[1]), len(train_set.classes))

    # ---- helpers
    def _train(self, run: Path, model: str, options: Dict[str, Any], epochs: int, data: Tuple) -> Dict[str, Any]:
        """Train (or resume, or just read) one run; returns its last history row."""
        from shiftadd.train.checkpoint import load_checkpoint_meta

        a = self.args
        if (run / "checkpoint.json").is_file():
            meta = load_checkpoint_meta(str(run))
            if meta["epoch"] >= epochs:
                return meta["history"][-1]
            cfg = make_config("shiftaddnet", model=model, model_options=options, epochs=epochs)
            return train(cfg, str(run), resume=True, data=data, log=print).history[-1]
        cfg = make_config("shiftaddnet", model=model, model_options=options, dataset=a.dataset, epochs=epochs,
                          batch_size=a.batch_size, lr=a.lr, shift_lr=a.shift_lr, seed=a.seed, device=a.device,
                          progress=False, threads=a.threads)
        return train(cfg, str(run), data=data, log=print).history[-1]

    def supernet_dir(self, mode: str) -> Path:
        return self.out / "supernet" / mode

    def load_supernet(self, mode: str):
        from shiftadd.train import load_trained_model

        model, _, _ = load_trained_model(str(self.supernet_dir(mode)), self.args.device)
        return model

    def scorer(self, supernet) -> SubnetScorer:
        val = self.val
        if self.args.val_images is not None and self.args.val_images < len(val):
            val = val.balanced_subset(self.args.val_images, self.args.seed)
        return SubnetScorer(supernet, val, self.train_part, self.args.recal_images, 256, self.args.device, self.args.seed)

    # ---- stages
    def stage_supernet(self) -> None:
        a = self.args
        for mode in self.modes:
            run = self.supernet_dir(mode)
            run.mkdir(parents=True, exist_ok=True)
            (run / "nas.json").write_text(json.dumps({"space": self.space.as_dict(), "mode": mode,
                                                      "val_size": a.val_size, "split_seed": a.seed}, indent=1))
            options = {"mode": mode, "ops": list(self.space.ops), "widths": list(self.space.widths),
                       "width": self.space.base_width, "sandwich": a.sandwich, "seed": a.seed,
                       "reg_weight": a.reg_weight, "attention": a.attention}
            t0 = time.time()
            self._train(run, f"supernet-resnet{a.depth}", options, a.supernet_epochs, (self.train_part, self.val))
            self._timed(f"supernet/{mode}", time.time() - t0)

    def ranking_archs(self) -> List[Architecture]:
        rng = np.random.default_rng(self.args.seed + 1)
        archs: List[Architecture] = []
        while len(archs) < self.args.num_archs:
            a = self.space.sample(rng)
            if a not in archs:
                archs.append(a)
        return archs

    def stage_ranking(self) -> None:
        from scipy.stats import kendalltau

        a = self.args
        archs = self.ranking_archs()
        done = self._load("ranking.json")
        if done and done["architectures"] == [x.key() for x in archs] and set(done["modes"]) == set(self.modes):
            return
        standalone = []
        t0 = time.time()
        for i, arch in enumerate(archs):
            row = self._train(self.out / "standalone" / f"arch{i}", f"hybrid-resnet{a.depth}",
                              {"arch": arch.as_dict(), "width": a.base_width}, a.standalone_epochs,
                              (self.train_part, self.val))
            standalone.append(row["test_acc"])  # the "test" set of these runs is the validation slice
        self._timed("ranking/standalone", time.time() - t0)
        result = {"architectures": [x.key() for x in archs], "standalone_val_acc": standalone, "modes": {}}
        for mode in self.modes:
            t0 = time.time()
            net = self.load_supernet(mode)
            score = self.scorer(net)
            inherited = [score(x) for x in archs]
            tau, p = kendalltau(inherited, standalone)
            result["modes"][mode] = {"params": sum(t.numel() for t in net.parameters()), "inherited_val_acc": inherited,
                                     "kendall_tau": None if np.isnan(tau) else float(tau),
                                     "p_value": None if np.isnan(p) else float(p)}
            self._timed(f"ranking/{mode}", time.time() - t0)
        self._save("ranking.json", result)
        if "heterogeneous" in self.modes:
            self.plot_histograms(self.load_supernet("heterogeneous"))

    def plot_histograms(self, net) -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        convs = net.remapped_convs()
        picks = [convs[0], convs[len(convs) // 2], convs[-1]]
        fig, axes = plt.subplots(2, len(picks), figsize=(4 * len(picks), 6))
        for col, conv in enumerate(picks):
            for row, (label, w) in enumerate((("shared (conv view)", conv.full_weight("conv")),
                                              ("remapped (adder view)", conv.full_weight("adder")))):
                v = w.detach().flatten().cpu()
                mu, b = laplace_fit(v)
                ax = axes[row, col]
                ax.hist(v.numpy(), bins=80, density=True, alpha=0.6, label=label)
                xs = torch.linspace(float(v.min()), float(v.max()), 400)
                ax.plot(xs.numpy(), laplace_density(xs, mu, b).numpy(), "r-", label=f"Laplace fit b={b:.3g}")
                ax.set_title(f"{tuple(w.shape)} {label}", fontsize=8)
                ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(self.out / "weight_histograms.png", dpi=110)
        plt.close(fig)

    def budgets_uj(self) -> List[float]:
        conv = self.lookup.energy_uj(Architecture.uniform("conv", self.args.depth))
        low = self.lookup.energy_uj(self.lookup.extreme(True))
        return [max(low, float(f) * conv) for f in self.args.budget_fractions.split(",") if f]

    def stage_search(self) -> None:
        a = self.args
        mode = "heterogeneous" if "heterogeneous" in self.modes else self.modes[-1]
        score = self.scorer(self.load_supernet(mode))
        (self.out / "search").mkdir(exist_ok=True)
        for budget in self.budgets_uj():
            t0 = time.time()
            cfg = EvolutionConfig(a.population, a.parents, a.mutations or a.population // 2,
                                  a.crossovers or a.population // 2, a.generations, 0.2, budget, None, a.seed)
            state = evolutionary_search(self.space, score, self.lookup, cfg,
                                        str(self.out / "search" / f"{budget:.6g}uJ.json"))
            Architecture.from_key(state["best"]["arch"]).save(self.out / "search" / f"{budget:.6g}uJ.yaml")
            self._timed(f"search/{budget:.6g}uJ", time.time() - t0)

    def retrain_list(self, subset: bool = True) -> List[Tuple[str, Architecture]]:
        """The networks to retrain: the uniform baselines and the found architectures (``--retrain-only``
        narrows it unless ``subset`` is False)."""
        out = [(f"all-{op}", Architecture.uniform(op, self.args.depth)) for op in BASELINES if op in self.space.ops]
        for budget in self.budgets_uj():
            path = self.out / "search" / f"{budget:.6g}uJ.yaml"
            if path.is_file():
                out.append((f"found-{budget:.6g}uJ", Architecture.load(path)))
        if subset and self.args.retrain_only:
            wanted = set(self.args.retrain_only.split(","))
            unknown = wanted - {name for name, _ in out}
            if unknown:
                raise SystemExit(f"--retrain-only: unknown network(s) {sorted(unknown)}; have {[n for n, _ in out]}")
            out = [(name, arch) for name, arch in out if name in wanted]
        return out

    def stage_retrain(self) -> None:
        """Every network trains on the same images as the supernet, is watched on the validation slice,
        and its last-epoch model is evaluated once on the test split (``RUN/test.json``)."""
        from shiftadd.train.runs import evaluate_checkpoint

        a = self.args
        for name, arch in self.retrain_list():
            t0 = time.time()
            run = self.out / a.retrain_name / name
            self._train(run, f"hybrid-resnet{a.depth}", {"arch": arch.as_dict(), "width": a.base_width},
                        a.retrain_epochs, (self.train_part, self.val))
            if not (run / "test.json").is_file():
                res = evaluate_checkpoint(str(run), device=a.device, data=(self.train_part, self.test), test_subset=0)
                self._save(str(Path(a.retrain_name) / name / "test.json"),
                           {"test_acc": res["acc"], "test_loss": res["loss"], "epoch": res["epoch"],
                            "test_images": len(self.test)})
            self._timed(f"{a.retrain_name}/{name}", time.time() - t0)

    def stage_report(self) -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from shiftadd.train.checkpoint import load_checkpoint_meta

        suffix = "" if self.args.retrain_name == "retrain" else f"-{self.args.retrain_name}"
        rows = []
        for name, arch in self.retrain_list(subset=False):
            # a network this retrain left out (--retrain-only) is reported from the first retrain, marked so
            folder = next((f for f in (self.args.retrain_name, "retrain")
                           if (self.out / f / name / "test.json").is_file()), None)
            if folder is None:
                continue
            run = self.out / folder / name
            meta = load_checkpoint_meta(str(run))
            test = json.loads((run / "test.json").read_text())
            rows.append({"name": name, "folder": folder, "arch": arch.key(), "val_acc": meta["history"][-1]["test_acc"],
                         "test_acc": test["test_acc"], "epochs": meta["epoch"], "energy_uj": self.lookup.energy_uj(arch),
                         "params": self.lookup.params(arch)})
        report = {"settings": vars(self.args), "space": self.space.as_dict(), "budgets_uj": self.budgets_uj(),
                  "retrained": rows, "ranking": self._load("ranking.json"), "timings_s": self.timings,
                  "train_images": len(self.train_part), "val_images": len(self.val), "test_images": len(self.test)}
        self._save(f"results{suffix}.json", report)
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in rows:
            marker = "*" if r["name"].startswith("found") else "o"
            ax.scatter(r["energy_uj"], 100 * r["test_acc"], marker=marker, s=90 if marker == "*" else 40)
            label = r["name"] + ("" if r["folder"] == self.args.retrain_name else f" ({r['folder']})")
            ax.annotate(label, (r["energy_uj"], 100 * r["test_acc"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        ax.set_xlabel(f"inference energy per image (uJ, {self.args.platform} {self.args.fmt})")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"hybrid ResNet-{self.args.depth}: found vs uniform networks", fontsize=9)
        fig.tight_layout()
        fig.savefig(self.out / f"acc_vs_energy{suffix}.png", dpi=110)
        plt.close(fig)
        for r in rows:
            name = r["name"] + ("" if r["folder"] == self.args.retrain_name else f" ({r['folder']})")
            print(f"{name:<30} val {100 * r['val_acc']:6.2f}%  test {100 * r['test_acc']:6.2f}%  "
                  f"{r['energy_uj']:9.4g} uJ  {r['params']:>9,} params")
        print(f"results in {self.out / f'results{suffix}.json'}")


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    pipe = Pipeline(args)
    for stage in args.stages.split(","):
        print(f"== stage {stage}")
        getattr(pipe, f"stage_{stage}")()
    return 0


if __name__ == "__main__":
    sys.exit(main())
