"""ShiftAddNAS for Transformers on Multi30k at a CPU budget: the pipeline behind issue 15's results.

Stages (each skips what exists; an interrupted training or search resumes):

1. ``supernet``: one SuperTransformer over the hybrid space (``shiftadd nas supernet --space transformer``);
   the space has no GLU gate and pure lightweight decoder blocks, so that its multiplication-free part
   is a real sub-space;
2. ``search``: evolution at every ``--budgets`` energy per 30 + 30-token sentence in three spaces over
   the same supernet (``nas search`` narrowing): ``hybrid`` (everything), ``mult`` (attention and
   multiplicative lightweight convolutions, multiplicative linear layers: HAT-like) and ``free``
   (adder / shift-add lightweight convolutions, shift linear layers), scored by validation loss with
   inherited weights;
3. ``inherited``: the validation loss of every found architecture with the supernet's inherited weights
   (``inherited.json``; the supernet's weights are not needed after this stage);
4. ``retrain``: every found architecture from scratch with the same epochs, once per ``--seeds``
   (``shiftadd train --task translation -O arch=...``), model selection on validation, test-2016 BLEU
   measured once by the trainer at the end;
5. ``ranking``: Kendall tau between the inherited validation NLL (the search's score) of the retrained
   architectures, and of the ``--baselines`` that lie in the supernet's space, and their validation loss
   and BLEU after training (from the runs' logs);
6. ``quant8``: the best hybrid (highest validation BLEU of the first seed) retrained with 8-bit
   fixed-point training (``--quant fix8``: every adder, shift, conv and linear layer), energy at fix8;
7. ``report``: ``results.json``, ``bleu_vs_energy.png``, the claim check (hybrid vs both restricted
   searches at each budget against the seed-to-seed spread) and the wall time of every stage.

    python scripts/nas_transformer_experiments.py --out results/nas-mt --budgets 400,700 --supernet-procs 2 \\
        --baselines results/runs/mt-transformer,results/runs/mt-lightweight,results/runs/mt-lightweight-shiftffn

A toy run (a few minutes): ``--subset 300 --vocab-size 300 --embed-dims 16,32 --ffn-dims 32 --heads 2
--kernel-sizes 3,5,7 --max-tokens 512 --val-sentences 50 --budgets 20,30 --supernet-epochs 1
--retrain-epochs 1 --population 4 --parents 2 --generations 1 --seeds 0``.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from pipeline_folder import PipelineFolder  # noqa: E402
from shiftadd.cli import main as shiftadd_main  # noqa: E402
from shiftadd.nas.transformer_space import DECODER_BLOCKS, ENCODER_BLOCKS, TransformerArchitecture  # noqa: E402

#: The narrowed spaces of the search stage: ``nas search`` flags (the hybrid space is the whole supernet).
SPACES: Dict[str, List[str]] = {
    "hybrid": [],
    "mult": ["--encoder-blocks", "attention,lightweight,attention+lightweight",
             "--decoder-blocks", "attention,attention+lightweight", "--layer-ops", "conv"],
    "free": ["--encoder-blocks", "lightweight-adder,lightweight-shiftadd",
             "--decoder-blocks", "lightweight-adder,lightweight-shiftadd", "--layer-ops", "shift-ps"],
}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/nas-mt")
    p.add_argument("--data-dir", default=None, help="Multi30k folder (default: the shared one)")
    p.add_argument("--subset", type=int, default=None, help="first N training pairs (toy runs)")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--embed-dims", default="192,256")
    p.add_argument("--ffn-dims", default="512,1024")
    p.add_argument("--heads", default="4")
    p.add_argument("--encoder-layers", type=int, default=3)
    p.add_argument("--decoder-layers", default="1,2,3")
    p.add_argument("--kernel-sizes", default="3,7,15")
    p.add_argument("--supernet-epochs", type=int, default=10)
    p.add_argument("--retrain-epochs", type=int, default=10)
    p.add_argument("--seeds", default="0,1", help="retraining seeds (the spread of the claim check)")
    p.add_argument("--budgets", default="400,700",
                   help="energy budgets, uJ (compute + memory) per 30 + 30-token sentence")
    p.add_argument("--spaces", default="hybrid,mult,free")
    p.add_argument("--val-sentences", type=int, default=500, help="validation pairs that score candidates")
    p.add_argument("--population", type=int, default=16)
    p.add_argument("--parents", type=int, default=4)
    p.add_argument("--generations", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="threads per process")
    p.add_argument("--shift-lr", type=float, default=0.01,
                   help="learning rate of the DeepShift-PS parameters (supernet and retrains; the base lr is 1e-3)")
    p.add_argument("--supernet-procs", type=int, default=1,
                   help="train the supernet data-parallel under torchrun with N processes (each takes a slice "
                        "of every --max-tokens batch: the same global batches and steps)")
    p.add_argument("--baselines", default="",
                   help="comma-separated finished translation runs (the hand-designed networks of docs/translation.md, "
                        "same epochs) to put beside the searched ones in the report")
    p.add_argument("--stages", default="supernet,search,inherited,retrain,ranking,quant8,report")
    return p.parse_args(argv)


def cli(argv: List[str], quiet: bool = False) -> str:
    """Run ``shiftadd ARGV`` in this process; its stdout (echoed unless ``quiet``); exit on failure."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = shiftadd_main(argv)
    if not quiet:
        print(out.getvalue(), end="")
    if rc:
        raise SystemExit(f"shiftadd {' '.join(argv)} exited with {rc}")
    return out.getvalue()


def finished_run(run: Path) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``(checkpoint metadata, results["best"])`` of a finished training run folder."""
    return (json.loads((run / "checkpoint.json").read_text()),
            json.loads((run / "results.json").read_text())["best"])


class Pipeline(PipelineFolder):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args.out)
        self.args = args
        self.supernet = self.out / "supernet"
        self.budgets = [float(b) for b in args.budgets.split(",") if b]
        self.spaces = [s for s in args.spaces.split(",") if s]
        self.seeds = [int(s) for s in args.seeds.split(",") if s]

    def _data(self) -> List[str]:
        a = self.args
        out = ["--vocab-size", str(a.vocab_size), "--max-tokens", str(a.max_tokens), "--threads", str(a.threads)]
        if a.data_dir:
            out += ["--data-dir", a.data_dir]
        if a.subset:
            out += ["--subset", str(a.subset)]
        return out

    def arch_path(self, space: str, budget: float) -> Path:
        return self.out / "search" / f"{space}-{budget:g}uJ.yaml"

    # ---- stages
    def stage_supernet(self) -> None:
        a, t0 = self.args, time.time()
        if (self.supernet / "checkpoint.json").is_file():
            if self._epochs(self.supernet) >= a.supernet_epochs:
                return
            argv = ["nas", "supernet", "--resume", str(self.supernet), "--epochs", str(a.supernet_epochs),
                    "--no-progress"]
        else:
            argv = ["nas", "supernet", "--space", "transformer", "--out", str(self.supernet), "--embed-dims",
                    a.embed_dims, "--ffn-dims", a.ffn_dims, "--heads", a.heads, "--encoder-layers",
                    str(a.encoder_layers), "--decoder-layers", a.decoder_layers, "--kernel-sizes", a.kernel_sizes,
                    "--no-glu", "--layer-ops", "conv,shift-ps", "--encoder-blocks", ",".join(ENCODER_BLOCKS),
                    "--decoder-blocks", ",".join(DECODER_BLOCKS + ("lightweight-adder", "lightweight-shiftadd")),
                    "-T", f"shift_lr={a.shift_lr:g}", "--epochs", str(a.supernet_epochs), "--no-progress"] \
                + self._data()
        if a.supernet_procs > 1:  # torchrun (gloo on CPU): each rank trains on a slice of every batch
            subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                            str(a.supernet_procs), "-m", "shiftadd.cli"] + argv, check=True, cwd=ROOT)
        else:
            cli(argv)
        self._timed("supernet", time.time() - t0)

    @staticmethod
    def _epochs(run: Path) -> int:
        return int(json.loads((run / "checkpoint.json").read_text())["epoch"])

    def stage_search(self) -> None:
        a = self.args
        (self.out / "search").mkdir(exist_ok=True)
        for space in self.spaces:
            for budget in self.budgets:
                path = self.arch_path(space, budget)
                if path.is_file():
                    continue
                t0 = time.time()
                cli(["nas", "search", str(self.supernet), "--energy-budget", f"{budget:g}", "--val-sentences",
                     str(a.val_sentences), "--max-tokens", str(a.max_tokens), "--population", str(a.population),
                     "--parents", str(a.parents), "--mutations", str(a.population // 2), "--crossovers",
                     str(a.population // 2), "--generations", str(a.generations), "--threads", str(a.threads),
                     "--out", str(self.out / "search" / f"{space}-{budget:g}uJ.json"), "--save-arch", str(path)]
                    + SPACES[space])
                self._timed(f"search/{space}-{budget:g}uJ", time.time() - t0)

    def retrain_runs(self) -> List[Dict[str, Any]]:
        """One entry per (space, budget, seed) with a found architecture; an architecture found more than
        once (a budget that did not bind, or two spaces meeting) shares the first entry's run."""
        out: List[Dict[str, Any]] = []
        first_run: Dict[tuple, Path] = {}
        for space in self.spaces:
            for budget in self.budgets:
                path = self.arch_path(space, budget)
                if not path.is_file():
                    continue
                key = TransformerArchitecture.load(path).key()
                for seed in self.seeds:
                    name = f"{space}-{budget:g}uJ-seed{seed}"
                    run = first_run.setdefault((key, seed), self.out / "retrain" / name)
                    out.append({"name": name, "space": space, "budget": budget, "seed": seed, "arch": path,
                                "arch_key": key, "run": run})
        return out

    def stage_retrain(self) -> None:
        a = self.args
        for r in self.retrain_runs():
            run = r["run"]
            if (run / "results.json").is_file() or run.name != r["name"]:  # done, or another entry's run
                continue
            t0 = time.time()
            arch = TransformerArchitecture.load(r["arch"])
            if (run / "checkpoint.json").is_file():
                cli(["train", "--resume", str(run), "--epochs", str(a.retrain_epochs), "--no-progress"])
            else:
                cli(["train", "--task", "translation", "--model", "transformer-seq", "-O",
                     f"arch={json.dumps(arch.as_dict())}", "--epochs", str(a.retrain_epochs), "--seed", str(r["seed"]),
                     "--shift-lr", f"{a.shift_lr:g}", "--out", str(run), "--no-progress"] + self._data())
            self._timed(f"retrain/{r['name']}", time.time() - t0)

    def _val_batches(self, tokenizer_run: Path):
        from shiftadd.data.text import TokenBatchLoader
        from shiftadd.train.checkpoint import load_checkpoint_meta
        from shiftadd.train.config import config_from_dict
        from shiftadd.train.translation import TranslationTask, tokenizer_from_meta

        meta = load_checkpoint_meta(str(tokenizer_run))
        config = config_from_dict(meta["config"])
        val = TranslationTask().load_split(config, "val", tokenizer_from_meta(meta, str(tokenizer_run)),
                                           self.args.val_sentences)
        return list(TokenBatchLoader(val.data, self.args.max_tokens, shuffle=False, seed=0))

    def space(self):
        """The SuperTransformer's search space (from its committed ``checkpoint.json``: no weights needed)."""
        from shiftadd.nas.transformer_space import TransformerSearchSpace

        meta = json.loads((self.supernet / "checkpoint.json").read_text())
        return TransformerSearchSpace.from_dict(meta["model_build"]["options"]["space"])

    def baseline_archs(self) -> Dict[str, str]:
        """``{baseline run folder: architecture key}`` of the ``--baselines`` whose network lies in the
        supernet's space (so they join the ranking: the same trainer, epochs and validation split)."""
        from shiftadd.errors import UserError
        from shiftadd.models import create

        space, out = self.space(), {}
        for path in (b for b in self.args.baselines.split(",") if b):
            build = json.loads((Path(path) / "checkpoint.json").read_text())["model_build"]
            try:
                cfg = create(build["name"], op=build["op"], **build["options"]).cfg
                out[path] = space.member(TransformerArchitecture.from_config(cfg), f"baseline {path}").key()
            except (UserError, AttributeError) as exc:
                print(f"{path}: not in the supernet's space, not ranked ({exc})")
        return out

    def stage_inherited(self) -> None:
        """Validation NLL with the SuperTransformer's inherited weights of every found architecture and of
        every baseline in its space, saved to ``inherited.json``, so that the ranking needs only the finished
        runs' logs (the supernet's weights stay out of git and need not outlive the search)."""
        import torch

        from shiftadd.nas.scoring import load_supernet, translation_nll

        done = self._load("inherited.json") or {}
        keys = [r["arch_key"] for r in self.retrain_runs()] + list(self.baseline_archs().values())
        todo = [k for k in dict.fromkeys(keys) if k not in done]
        if not todo:
            return
        t0 = time.time()
        torch.set_num_threads(self.args.threads)
        supernet, _, _ = load_supernet(str(self.supernet))
        batches = self._val_batches(self.supernet)
        for key in todo:
            done[key] = translation_nll(supernet.set_active(TransformerArchitecture.from_key(key)), batches)
        self._save("inherited.json", done)
        self._timed("inherited", time.time() - t0)

    def stage_ranking(self) -> None:
        """Kendall tau of the inherited validation NLL (the search's score) against the retrained networks'
        validation loss (label-smoothed, as logged by the trainer at the selected epoch) and against their
        validation BLEU (negated: positive tau means the supernet ranks as retraining does), over the
        found architectures (first seed) and the baselines in the space; read from the runs' logs."""
        from scipy.stats import kendalltau

        inherited = self._load("inherited.json") or {}
        runs = {r["run"]: (r["name"], r["arch_key"]) for r in self.retrain_runs() if r["seed"] == self.seeds[0]
                and r["run"].name == r["name"]}  # each architecture once
        runs.update({Path(p): (Path(p).name, k) for p, k in self.baseline_archs().items()})
        vocab = json.loads((self.supernet / "checkpoint.json").read_text())["dataset"]["subword_model"]
        rows = []
        for run, (name, key) in runs.items():
            if key not in inherited or not (run / "results.json").is_file():
                continue
            meta, best = finished_run(run)
            if meta["dataset"]["subword_model"] != vocab:
                raise SystemExit(f"{run} has another subword vocabulary than the supernet: losses do not compare")
            logged = {m["epoch"]: m for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
            rows.append({"name": name, "arch": key, "inherited_val_nll": inherited[key],
                         "retrained_val_loss": logged[best["epoch"]]["val_loss"], "retrained_val_bleu": best["val_bleu"]})
        if len(rows) < 2:
            return

        def tau(values: List[float]) -> Dict[str, float]:
            t, p = kendalltau([x["inherited_val_nll"] for x in rows], values)
            return {"tau": float(t), "p_value": float(p)}

        self._save("ranking.json", {"architectures": rows, "n": len(rows), "val_sentences": self.args.val_sentences,
                                    "vs_val_loss": tau([x["retrained_val_loss"] for x in rows]),
                                    "vs_val_bleu": tau([-x["retrained_val_bleu"] for x in rows])})

    def best_hybrid(self) -> Optional[Dict[str, Any]]:
        """The retrained hybrid (first seed) with the highest validation BLEU."""
        done = [r for r in self.retrain_runs() if r["space"] == "hybrid" and r["seed"] == self.seeds[0]
                and (r["run"] / "results.json").is_file()]
        val = lambda r: json.loads((r["run"] / "results.json").read_text())["best"]["val_bleu"]  # noqa: E731
        return max(done, key=val) if done else None

    def stage_quant8(self) -> None:
        a, best = self.args, self.best_hybrid()
        run = self.out / "retrain" / "hybrid-best-fix8"
        if best is None or (run / "results.json").is_file():
            return
        t0 = time.time()
        arch = TransformerArchitecture.load(best["arch"])
        if (run / "checkpoint.json").is_file():
            cli(["train", "--resume", str(run), "--epochs", str(a.retrain_epochs), "--no-progress"])
        else:
            cli(["train", "--task", "translation", "--model", "transformer-seq", "-O", f"arch={json.dumps(arch.as_dict())}",
                 "--quant", "fix8", "--epochs", str(a.retrain_epochs), "--seed", str(best["seed"]), "--shift-lr",
                 f"{a.shift_lr:g}", "--out", str(run),
                 "--no-progress"] + self._data())
        (run / "source.json").write_text(json.dumps({"fp32_run": best["run"].name, "arch": best["arch_key"]}))
        self._timed("quant8", time.time() - t0)

    def stage_report(self) -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from translation_report import sentence_energy_uj

        rows = []
        for r in self.retrain_runs():
            if not (r["run"] / "results.json").is_file():
                continue
            meta, best = finished_run(r["run"])
            rows.append({"name": r["name"], "run": r["run"].name, "space": r["space"], "budget_uj": r["budget"],
                         "seed": r["seed"], "arch": r["arch_key"], "params": meta["params"],
                         "energy_uj": sentence_energy_uj(meta["model_build"]), "val_bleu": best["val_bleu"],
                         "test_bleu": best["test_bleu"], "best_epoch": best["epoch"]})
        q8 = self.out / "retrain" / "hybrid-best-fix8"
        quant8 = None
        if (q8 / "results.json").is_file():
            meta, best = finished_run(q8)
            quant8 = {**json.loads((q8 / "source.json").read_text()), "val_bleu": best["val_bleu"],
                      "test_bleu": best["test_bleu"], "best_epoch": best["epoch"],
                      "energy_uj_fix8": sentence_energy_uj(meta["model_build"], fmt="fix8"),
                      "energy_uj_fp32": sentence_energy_uj(meta["model_build"])}
        baselines = []
        for path in (Path(b) for b in self.args.baselines.split(",") if b):
            if not (path / "results.json").is_file():
                raise SystemExit(f"baseline {path} has no results.json (not a finished translation run)")
            meta, best = finished_run(path)
            baselines.append({"run": path.name, "model": meta["model_build"]["options"], "params": meta["params"],
                              "epochs": meta["epoch"], "energy_uj": sentence_energy_uj(meta["model_build"]),
                              "val_bleu": best["val_bleu"], "test_bleu": best["test_bleu"]})
        claims = []
        for budget in self.budgets:
            by_space = {s: [x["test_bleu"] for x in rows if x["space"] == s and x["budget_uj"] == budget]
                        for s in self.spaces}
            if all(by_space.get(s) for s in ("hybrid", "mult", "free")):
                spread = max(max(v) - min(v) for v in by_space.values())
                mean = {s: sum(v) / len(v) for s, v in by_space.items()}
                seeded = all(len(v) >= 2 for v in by_space.values())  # else there is no spread to beat
                claims.append({"budget_uj": budget, "mean_test_bleu": mean, "seed_spread": spread if seeded else None,
                               "hybrid_beats_both_by_more_than_spread":
                                   mean["hybrid"] - max(mean["mult"], mean["free"]) > spread if seeded else None})
        self._save("results.json", {"settings": vars(self.args), "retrained": rows, "claims": claims, "fix8": quant8,
                                    "baselines": baselines, "ranking": self._load("ranking.json"), "timings_s": self.timings})
        fig, ax = plt.subplots(figsize=(6, 4))
        for space, marker in (("hybrid", "*"), ("mult", "o"), ("free", "s")):
            pts = [x for x in rows if x["space"] == space]
            if pts:
                ax.scatter([x["energy_uj"] for x in pts], [x["test_bleu"] for x in pts], marker=marker,
                           s=90 if marker == "*" else 40, label=space)
        if baselines:
            ax.scatter([b["energy_uj"] for b in baselines], [b["test_bleu"] for b in baselines], marker="x", c="k",
                       label="hand-designed")
            for b in baselines:
                ax.annotate(b["run"], (b["energy_uj"], b["test_bleu"]), fontsize=6, xytext=(3, 3),
                            textcoords="offset points")
        ax.set_xlabel("uJ per 30+30-token sentence (asic45nm fp32, compute + memory)", fontsize=9)
        ax.set_ylabel("BLEU, Multi30k En-De test-2016")
        ax.legend(fontsize=8)
        ax.set_title("searched Transformers: hybrid vs restricted spaces", fontsize=9)
        fig.tight_layout()
        fig.savefig(self.out / "bleu_vs_energy.png", dpi=110)
        plt.close(fig)
        for x in rows:
            print(f"{x['name']:<34} {x['energy_uj']:8.1f} uJ  val BLEU {x['val_bleu']:6.2f}  test BLEU {x['test_bleu']:6.2f}")
        for b in baselines:
            print(f"{b['run']:<34} {b['energy_uj']:8.1f} uJ  val BLEU {b['val_bleu']:6.2f}  test BLEU {b['test_bleu']:6.2f}"
                  "  (hand-designed)")
        for c in claims:
            spread = "not measured (a space has one seed)" if c["seed_spread"] is None else f"{c['seed_spread']:.2f}"
            print(f"budget {c['budget_uj']:g} uJ: mean test BLEU {c['mean_test_bleu']}, seed spread {spread}: "
                  f"hybrid beats both by more than the spread: {c['hybrid_beats_both_by_more_than_spread']}")
        ranking = self._load("ranking.json")
        if ranking:
            print(f"ranking over {ranking['n']} architectures: Kendall tau {ranking['vs_val_loss']['tau']:+.2f} vs "
                  f"retrained val loss (p {ranking['vs_val_loss']['p_value']:.2f}), {ranking['vs_val_bleu']['tau']:+.2f} "
                  f"vs retrained val BLEU (p {ranking['vs_val_bleu']['p_value']:.2f})")
        if quant8:
            print(f"best hybrid at fix8: test BLEU {quant8['test_bleu']:.2f} ({quant8['energy_uj_fix8']:.1f} uJ at fix8, "
                  f"{quant8['energy_uj_fp32']:.1f} uJ at fp32; fp32 run {quant8['fp32_run']})")
        print(f"results in {self.out / 'results.json'}")


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    pipe = Pipeline(args)
    for stage in args.stages.split(","):
        print(f"== stage {stage}", flush=True)
        getattr(pipe, f"stage_{stage}")()
    return 0


if __name__ == "__main__":
    sys.exit(main())
