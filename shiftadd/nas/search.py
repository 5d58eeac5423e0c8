"""Architecture search over a search space: the CNN :class:`~shiftadd.nas.space.SearchSpace` or the
:class:`~shiftadd.nas.transformer_space.TransformerSearchSpace` (one engine, two spaces).

A space provides ``sample``, ``mutate``, ``crossover`` (numpy Generator), ``from_key`` (the state
stores architecture keys), ``suggest`` (Optuna) and ``as_dict``; an energy lookup provides
``energy_uj``, ``params``, ``extreme``, ``min_params``, ``check_budget`` and ``settings``
(:class:`~shiftadd.nas.energy_table.EnergyLookup`,
:class:`~shiftadd.nas.transformer_energy.TransformerEnergyLookup`).

* :func:`evolutionary_search`: the evolutionary search of SPOS / ShiftAddNAS (population 50, the
  top 10 kept as parents, 25 mutations with probability 0.2 and 25 crossovers per generation, 20
  generations) under an energy budget (and optionally a parameter budget). When too few random
  architectures fit a tight budget, the first population is filled with the cheapest network and
  its mutants. The whole state (the
  next population, the parents, every score, the random generator) is written as JSON after each
  generation, so an interrupted search resumes exactly.
* :func:`pareto_search`: multi-objective search (accuracy up, energy down) with Optuna's NSGA-II
  sampler; an Optuna storage (``sqlite:///file.db`` or a journal file) lets several workers share
  one study. Returns the Pareto front.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from shiftadd.errors import UserError
from shiftadd.utils import atomic_write_json

Architecture = Any  # an Architecture or a TransformerArchitecture (anything with .key())
SearchSpace = Any   # a SearchSpace or a TransformerSearchSpace
EnergyLookup = Any  # an EnergyLookup or a TransformerEnergyLookup
Score = Callable[[Architecture], float]


@dataclass
class EvolutionConfig:
    """Settings of :func:`evolutionary_search` (the paper's defaults)."""

    population: int = 50
    parents: int = 10
    mutations: int = 25
    crossovers: int = 25
    generations: int = 20
    mutate_prob: float = 0.2
    energy_budget_uj: Optional[float] = None
    max_params: Optional[int] = None
    seed: int = 0
    max_latency_ms: Optional[float] = None  # needs a ``latency`` predictor (Transformers: LatencyPredictor)
    max_tries: int = 100  # draws per wanted child before a generation gives up on filling up

    def validate(self) -> "EvolutionConfig":
        for name in ("population", "parents", "generations", "max_tries"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.mutations < 0 or self.crossovers < 0 or self.mutations + self.crossovers < 1:
            raise UserError("mutations and crossovers must be >= 0 and not both 0")
        if not 0 <= self.mutate_prob <= 1:
            raise UserError(f"mutation probability must be in [0, 1], got {self.mutate_prob}")
        return self


class _Constraints:
    def __init__(self, lookup: EnergyLookup, cfg: EvolutionConfig,
                 latency: Optional[Callable[[Architecture], float]] = None) -> None:
        self.lookup, self.cfg, self.latency = lookup, cfg, latency
        lookup.check_budget(cfg.energy_budget_uj)
        if cfg.max_latency_ms is not None and latency is None:
            raise UserError("a latency budget needs a latency model (--latency-model, from `shiftadd nas latency`)")
        if cfg.max_params is not None and lookup.min_params() > cfg.max_params:
            raise UserError(f"parameter budget {cfg.max_params} is below the smallest network of the space "
                            f"({lookup.min_params()} parameters)")

    def ok(self, arch: Architecture) -> bool:
        if self.cfg.energy_budget_uj is not None and self.lookup.energy_uj(arch) > self.cfg.energy_budget_uj:
            return False
        if self.cfg.max_latency_ms is not None and self.latency(arch) > self.cfg.max_latency_ms:
            return False
        return self.cfg.max_params is None or self.lookup.params(arch) <= self.cfg.max_params


def _draw(make: Callable[[], Architecture], want: int, ok: Callable[[Architecture], bool], tries: int,
          seen: set) -> List[Architecture]:
    """Up to ``want`` new distinct architectures from ``make`` that satisfy ``ok``."""
    out: List[Architecture] = []
    for _ in range(want * tries):
        if len(out) == want:
            break
        a = make()
        if a.key() not in seen and ok(a):
            seen.add(a.key())
            out.append(a)
    return out


def _row(arch: Architecture, score: float, lookup: EnergyLookup) -> Dict[str, Any]:
    """One result row: the architecture's key, its score, energy (uJ) and parameters."""
    return {"arch": arch.key(), "score": score, "energy_uj": lookup.energy_uj(arch), "params": lookup.params(arch)}


def evolutionary_search(space: SearchSpace, score: Score, lookup: EnergyLookup, cfg: EvolutionConfig,
                        state_path: Optional[str] = None, stop_after: Optional[int] = None,
                        log: Callable[[str], None] = print,
                        latency: Optional[Callable[[Architecture], float]] = None) -> Dict[str, Any]:
    """Run (or resume, when ``state_path`` holds a state) the search; returns the final state.

    ``stop_after``: return after that many generations of this call (the state stays resumable).
    ``latency``: predicted latency (ms) of an architecture, for ``cfg.max_latency_ms``.
    The result's ``best`` is the highest-scoring architecture within the constraints.
    """
    cfg.validate()
    cons = _Constraints(lookup, cfg, latency)
    settings = {"config": asdict(cfg), "space": space.as_dict(), "energy": lookup.settings()}
    if cfg.max_latency_ms is None:
        del settings["config"]["max_latency_ms"]  # states written before the latency option still resume
    else:
        settings["latency"] = latency.settings() if hasattr(latency, "settings") else repr(latency)
    if state_path and os.path.isfile(state_path):
        with open(state_path) as f:
            state = json.load(f)
        if state["settings"] != settings:
            raise UserError(f"{state_path} holds a search with other settings; use another --out or the same flags")
        rng = np.random.default_rng()
        rng.bit_generator.state = state["rng"]
        if state["done"]:
            log(f"search in {state_path} already finished {cfg.generations} generations")
            return state
        log(f"resuming search from {state_path} at generation {state['generation'] + 1}")
    else:
        rng = np.random.default_rng(cfg.seed)
        seen: set = set()
        first = _draw(lambda: space.sample(rng), cfg.population, cons.ok, cfg.max_tries, seen)
        if len(first) < cfg.population:  # a tight budget: fill up around the cheapest network
            cheapest = lookup.extreme(True)
            first += _draw(lambda: cheapest, 1, cons.ok, 1, seen)
            first += _draw(lambda: space.mutate(cheapest, cfg.mutate_prob, rng), cfg.population - len(first),
                           cons.ok, cfg.max_tries, seen)
        if not first:
            raise UserError("no architecture of the space satisfies the constraints; loosen the budget")
        state = {"settings": settings, "generation": 0, "population": [a.key() for a in first], "parents": [],
                 "scores": {}, "history": [], "done": False, "rng": rng.bit_generator.state}
    scores: Dict[str, float] = state["scores"]
    ran = 0
    while state["generation"] < cfg.generations:
        g = state["generation"]
        population = [space.from_key(k) for k in state["population"]]
        for a in population:
            if a.key() not in scores:
                scores[a.key()] = float(score(a))
        ranked = sorted(set(state["parents"]) | set(state["population"]), key=lambda k: (-scores[k], k))
        state["parents"] = ranked[:cfg.parents]
        best = state["parents"][0]
        state["history"].append({"generation": g + 1, "best": _row(space.from_key(best), scores[best], lookup),
                                 "population_mean_score": float(np.mean([scores[k] for k in state["population"]])),
                                 "evaluated": len(scores)})
        log(f"generation {g + 1}/{cfg.generations}: best score {scores[best]:.4f} "
            f"({lookup.energy_uj(space.from_key(best)):.4g} uJ), {len(scores)} architectures scored")
        if g + 1 < cfg.generations:
            parents = [space.from_key(k) for k in state["parents"]]
            seen = set(scores) | set(state["population"])

            def mutant() -> Architecture:
                return space.mutate(parents[int(rng.integers(len(parents)))], cfg.mutate_prob, rng)

            def child() -> Architecture:
                i, j = rng.choice(len(parents), size=2, replace=len(parents) < 2)
                return space.crossover(parents[int(i)], parents[int(j)], rng)

            new = _draw(mutant, cfg.mutations, cons.ok, cfg.max_tries, seen)
            new += _draw(child, cfg.crossovers, cons.ok, cfg.max_tries, seen)
            state["population"] = [a.key() for a in new] or state["parents"]
        state["generation"] = g + 1
        state["done"] = state["generation"] >= cfg.generations
        state["rng"] = rng.bit_generator.state
        if state_path:
            atomic_write_json(state_path, state)
        ran += 1
        if stop_after is not None and ran >= stop_after and not state["done"]:
            break
    if state["done"]:
        best = state["parents"][0]
        state["best"] = _row(space.from_key(best), scores[best], lookup)
        state["top"] = [_row(space.from_key(k), scores[k], lookup) for k in state["parents"]]
        if state_path:
            atomic_write_json(state_path, state)
    return state


# --------------------------------------------------------------------------- NSGA-II (Optuna)

def open_storage(storage: Optional[str]):
    """An Optuna storage: None (in memory), a database URL (``sqlite:///s.db``) or a journal file path."""
    if storage is None:
        return None
    if "://" in storage:
        return storage
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(storage))


def _import_optuna():
    try:
        import optuna
    except ImportError:
        raise UserError("the multi-objective search needs Optuna: pip install 'shiftadd[nas]'") from None
    return optuna


def pareto_search(space: SearchSpace, score: Score, lookup: EnergyLookup, trials: int, seed: int = 0,
                  storage: Optional[str] = None, study_name: str = "shiftadd-nas",
                  energy_budget_uj: Optional[float] = None, population: int = 50,
                  log: Callable[[str], None] = print) -> Dict[str, Any]:
    """NSGA-II over ``space``: maximise ``score``, minimise energy (uJ). Runs until the study holds
    ``trials`` finished trials (shared by every worker on the same storage); returns the Pareto front."""
    optuna = _import_optuna()
    lookup.check_budget(energy_budget_uj)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def constraints(trial) -> List[float]:
        return [trial.user_attrs["energy_uj"] - energy_budget_uj] if energy_budget_uj is not None else []

    sampler = optuna.samplers.NSGAIISampler(population_size=population, seed=seed,
                                            constraints_func=constraints if energy_budget_uj is not None else None)
    study = optuna.create_study(study_name=study_name, storage=open_storage(storage), sampler=sampler,
                                directions=["maximize", "minimize"], load_if_exists=True)

    def objective(trial) -> tuple:
        arch = space.suggest(trial)
        energy = lookup.energy_uj(arch)
        trial.set_user_attr("energy_uj", energy)
        trial.set_user_attr("arch", arch.key())
        return float(score(arch)), energy

    done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    if done < trials:
        log(f"NSGA-II: {done} of {trials} trials done in study {study_name!r}, running the rest")
        study.optimize(objective, callbacks=[optuna.study.MaxTrialsCallback(
            trials, states=(optuna.trial.TrialState.COMPLETE,))], n_trials=trials - done)
    front = []
    for t in study.best_trials:
        feasible = energy_budget_uj is None or t.user_attrs["energy_uj"] <= energy_budget_uj
        if feasible:
            arch = space.from_key(t.user_attrs["arch"])
            front.append(_row(arch, t.values[0], lookup))
    front.sort(key=lambda r: r["energy_uj"])
    return {"study": study_name, "trials": len(study.trials), "pareto_front": front}
