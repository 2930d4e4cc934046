"""Hyperparameter search: one API, three back ends on the same objective (Optuna TPE, Ax's BoTorch GP, random).

    space = {"lr": Float(1e-5, 1e-3, log=True), "dropout": Float(0.0, 0.5), "batch_size": Choice((16, 32, 64))}

    def objective(params, trial):
        for epoch in range(1, epochs + 1):
            ...train one epoch...
            trial.report(epoch, val_loss)        # the pruner may stop the trial here
        return val_loss

    result = search(objective, space, backend="optuna", trials=20, seed=0, storage="runs/search.db",
                    pruner="median")
    result.best_params, result.best_value, result.trials      # a DataFrame, one row per trial

Every back end writes its trials into one Optuna study (the ledger): the same pruners apply to all of them, the
same history and parameter-importance plots read them, and an SQLite `storage` file makes any search resumable
(run `search` again with the same arguments and it continues after the last finished trial). `optuna` samples with
TPE (Bergstra et al. 2011) after `startup_trials` random ones; `random` with Optuna's RandomSampler. Both draw their
random trials from the same per-trial seeds, so they start from the same points (common random numbers): what
differs afterwards is what TPE's model adds; `ax` asks Ax (Bayesian optimisation: a Sobol
start, then BoTorch's Gaussian process with expected improvement) and saves Ax's own state next to the study
(`<storage>.ax.json`). Each trial's sampler is seeded from (seed, trial number), so a resumed search proposes
exactly what the uninterrupted one would have.

Pruners: "median" (Optuna's MedianPruner: stop a trial whose intermediate value is worse than the median of
earlier trials at the same epoch; the trial is PRUNED) and "stall" (the guide's early-stopping rule: stop after
`patience` epochs without improvement, `cookbook.monitor.Plateau`; the trial is COMPLETE with its best value, as
early stopping keeps the best checkpoint).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cookbook import plots
from cookbook.checks import positive_int
from cookbook.monitor import Plateau

__all__ = ["BACKENDS", "PRUNERS", "Choice", "Float", "Int", "Pruned", "SearchResult", "StallPruner", "Trial",
           "history_plot", "importance", "importance_plot", "search"]

BACKENDS = ("optuna", "ax", "random")
PRUNERS = ("none", "median", "stall")
_METRIC = "objective"


@dataclasses.dataclass(frozen=True)
class Float:
    """A real parameter in [low, high]; `log=True` searches its logarithm (learning rates)."""

    low: float
    high: float
    log: bool = False


@dataclasses.dataclass(frozen=True)
class Int:
    """An integer parameter in [low, high]."""

    low: int
    high: int
    log: bool = False


@dataclasses.dataclass(frozen=True)
class Choice:
    """One of a few values (batch sizes, optimizer names)."""

    values: tuple


def _check_space(space: Mapping) -> None:
    if not space:
        raise ValueError("the search space is empty: give at least one parameter, e.g. {'lr': Float(1e-5, 1e-3, log=True)}")
    for name, p in space.items():
        if isinstance(p, (Float, Int)):
            if not p.low < p.high or (p.log and p.low <= 0):
                raise ValueError(f"parameter {name!r}: need low < high (and low > 0 on a log scale), got {p}")
        elif isinstance(p, Choice):
            if len(p.values) < 2:
                raise ValueError(f"parameter {name!r}: a Choice needs at least two values, got {p.values!r}")
        else:
            raise TypeError(f"parameter {name!r} is a {type(p).__name__}; use Float, Int or Choice")


def _distributions(space: Mapping) -> dict:
    from optuna import distributions as d  # optional: the `evaluate` extra

    return {name: d.FloatDistribution(p.low, p.high, log=p.log) if isinstance(p, Float) else
            d.IntDistribution(p.low, p.high, log=p.log) if isinstance(p, Int) else
            d.CategoricalDistribution(list(p.values)) for name, p in space.items()}


class Pruned(Exception):
    """Raised by `Trial.report` when the search's pruner stops the trial; the search loop catches it."""


class StallPruner:
    """The guide's early-stopping rule as an Optuna pruner: stop after `patience` epochs without a new best.

    The decision replays `cookbook.monitor.Plateau` (the rule of the Trainer's EarlyStopping callback) over the
    trial's reported values, so tuning and training stop on the same rule. Shown in notebooks/13 §2.
    """

    def __init__(self, patience: int = 3, min_delta: float = 0.0):
        self.patience, self.min_delta = positive_int("patience", patience), min_delta
        Plateau(patience, min_delta)  # validates min_delta with the rule's own message

    def prune(self, study, trial) -> bool:
        sign = 1.0 if study.direction.name == "MINIMIZE" else -1.0
        rule = Plateau(self.patience, self.min_delta)
        return any(rule.update(step, sign * value) is not None
                   for step, value in sorted(trial.intermediate_values.items()))


class Trial:
    """What the objective gets besides its parameters: `number`, `params` and `report(epoch, value)`."""

    def __init__(self, optuna_trial, pruner: str):
        self._trial, self._pruner = optuna_trial, pruner
        self.number, self.params = optuna_trial.number, dict(optuna_trial.params)
        self.values: dict[int, float] = {}

    def report(self, epoch: int, value: float) -> None:
        """Record the objective after `epoch`; raises `Pruned` when the pruner stops this trial."""
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"trial {self.number} reported {value} at epoch {epoch}: the objective diverged")
        self.values[int(epoch)] = value
        self._trial.report(value, int(epoch))
        if self._pruner != "none" and self._trial.should_prune():
            raise Pruned(f"trial {self.number} stopped at epoch {epoch} by the {self._pruner} pruner")


@dataclasses.dataclass
class SearchResult:
    """A finished search: `trials` (number, state, value, params, epochs, seconds; failed trials left out), the
    best value and parameters, and the Optuna study that holds every trial."""

    backend: str
    direction: str
    trials: pd.DataFrame
    params: tuple[str, ...]
    study: object = dataclasses.field(repr=False)

    @property
    def best_value(self) -> float:
        done = self.trials[self.trials.state == "COMPLETE"]
        return float(done.value.min() if self.direction == "minimize" else done.value.max())

    @property
    def best_params(self) -> dict:
        done = self.trials[self.trials.state == "COMPLETE"]
        row = done.loc[done.value.idxmin() if self.direction == "minimize" else done.value.idxmax()]
        return {name: row[name].item() if hasattr(row[name], "item") else row[name] for name in self.params}

    def best_so_far(self) -> np.ndarray:
        """The best value after each trial (pruned trials keep the previous best)."""
        values = self.trials.value.where(self.trials.state == "COMPLETE").to_numpy(dtype=float)
        sign = 1.0 if self.direction == "minimize" else -1.0
        return sign * np.fmin.accumulate(np.where(np.isnan(values), np.inf, sign * values))


def _ax_client(space: Mapping, direction: str, seed: int, startup: int, path: Path | None):
    try:
        from ax import (  # optional, heavy: the `evaluate` extra
            ChoiceParameterConfig,
            Client,
            RangeParameterConfig,
        )
    except ImportError as exc:
        raise ImportError("the ax back end needs Ax: pip install 'ax-platform>=1.3,<2' (it brings BoTorch and "
                          f"GPyTorch), or use backend='optuna' [{exc}]") from None
    if path is not None and path.exists():
        client = Client.load_from_json_file(str(path))
        client._random_seed = seed  # Ax 1.3's JSON snapshot drops the seed; without it a resumed run drifts
        return client
    client = Client(random_seed=seed)
    configs = []
    for name, p in space.items():
        if isinstance(p, Choice):
            # Ax casts every value to the parameter's one type: (0, 0.5, 1.0) typed by its first value would offer 0
            # twice and never 0.5
            types = {type(v) for v in p.values}
            if types == {int, float}:
                types = {float}
            if len(types) > 1:
                raise TypeError(f"parameter {name!r}: the ax back end needs Choice values of one type, got {p.values!r}")
            kind = {bool: "bool", int: "int", float: "float", str: "str"}[types.pop()]
            configs.append(ChoiceParameterConfig(name=name, values=list(p.values), parameter_type=kind))
        else:
            configs.append(RangeParameterConfig(name=name, bounds=(p.low, p.high), scaling="log" if p.log else "linear",
                                                parameter_type="float" if isinstance(p, Float) else "int"))
    client.configure_experiment(parameters=configs)
    client.configure_optimization(objective=("-" if direction == "minimize" else "") + _METRIC)
    client.configure_generation_strategy(initialization_budget=startup, initialization_random_seed=seed)
    return client


@contextlib.contextmanager
def _quiet_ax():
    """Ax logs each generated and completed trial at INFO, from module loggers it sets to INFO itself, and its 1.3
    release calls pandas options that pandas 3 deprecates (a Pandas4Warning per trial): neither is the user's to
    act on, so both are muted inside Ax's calls only."""
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=getattr(pd.errors, "Pandas4Warning", FutureWarning),
                                    module=r"ax\.")
            yield
    finally:
        logging.disable(previous)


def search(objective: Callable[[dict, Trial], float], space: Mapping, *, backend: str = "optuna",
           trials: int = 20, seed: int = 0, direction: str = "minimize", pruner: str = "none", patience: int = 3,
           startup_trials: int = 4, storage: str | Path | None = None, name: str = "search",
           on_trial: Callable[[dict], None] | None = None) -> SearchResult:
    """Run (or resume) `trials` trials of `objective(params, trial) -> value` over `space` with one back end.

    `backend` is one of BACKENDS, `pruner` one of PRUNERS (`patience` is the stall rule's), `startup_trials`
    the random (TPE) or Sobol (Ax) trials before the model-based ones, and the median pruner's warm-up.
    `storage` is an SQLite file: the search resumes from it (same name, back end and seed). `on_trial(row)`
    gets each finished trial's row (an MLflow logger, a progress print). Shown in notebooks/13 §2.
    """
    import optuna  # optional: the `evaluate` extra

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if pruner not in PRUNERS:
        raise ValueError(f"unknown pruner {pruner!r}; valid: {', '.join(PRUNERS)}")
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"direction must be 'minimize' or 'maximize', got {direction!r}")
    positive_int("trials", trials)
    positive_int("startup_trials", startup_trials)
    _check_space(space)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = _distributions(space)
    url = None if storage is None else f"sqlite:///{Path(storage)}"
    study = optuna.create_study(
        study_name=f"{name}-{backend}", storage=url, load_if_exists=True, direction=direction,
        pruner=(optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=1) if pruner == "median"
                else StallPruner(patience) if pruner == "stall" else optuna.pruners.NopPruner()))
    setup = {"backend": backend, "seed": seed, "space": repr(sorted(space.items()))}
    for key, value in setup.items():
        saved = study.user_attrs.get(key)
        if saved is None:
            study.set_user_attr(key, value)
        elif saved != value:
            raise ValueError(f"storage {storage} holds study {study.study_name!r} with {key}={saved!r}, not {value!r}; "
                             "use another name or storage to start a new search")
    for stale in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(stale.number, state=optuna.trial.TrialState.FAIL)  # a crashed run's trial: not counted
    ax_path = None if storage is None else Path(f"{storage}.ax.json")
    client = None
    if backend == "ax":
        with _quiet_ax():
            client = _ax_client(space, direction, seed, startup_trials, ax_path)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    while (done := len(study.get_trials(deepcopy=False, states=finished))) < trials:
        # seeded by the finished trials before it: a trial interrupted (and marked FAIL) reruns with its own seed
        trial_seed = int(np.random.SeedSequence([seed, done]).generate_state(1)[0])
        ax_index = None
        if backend == "ax":
            with _quiet_ax():
                ((ax_index, params),) = client.get_next_trials(max_trials=1).items()
            study.enqueue_trial(params)
        else:
            study.sampler = (optuna.samplers.TPESampler(seed=trial_seed, n_startup_trials=startup_trials)
                             if backend == "optuna" else optuna.samplers.RandomSampler(seed=trial_seed))
        optuna_trial = study.ask(distributions)
        trial, start, state = Trial(optuna_trial, pruner), time.perf_counter(), optuna.trial.TrialState.COMPLETE
        try:
            value = float(objective(trial.params, trial))
        except Pruned:
            if pruner == "median":
                state = optuna.trial.TrialState.PRUNED
            best = min if direction == "minimize" else max
            value = best(trial.values.values()) if pruner == "stall" else trial.values[max(trial.values)]
        except BaseException:
            study.tell(optuna_trial, state=optuna.trial.TrialState.FAIL)
            if client is not None:
                client.mark_trial_failed(ax_index)
            raise
        optuna_trial.set_user_attr("seconds", time.perf_counter() - start)
        optuna_trial.set_user_attr("epochs", max(trial.values, default=0))
        study.tell(optuna_trial, value if state == optuna.trial.TrialState.COMPLETE else None, state=state)
        if client is not None:
            # a pruned trial's last value is what its configuration reached: the GP learns from it too
            with _quiet_ax():
                client.complete_trial(ax_index, raw_data={_METRIC: value})
            if ax_path is not None:
                client.save_to_json_file(str(ax_path))
        if on_trial is not None:
            on_trial({"backend": backend, "number": done, "state": state.name, "value": value, **trial.params,
                      "epochs": max(trial.values, default=0), "curve": dict(trial.values)})
    return _result(study, backend, direction, tuple(space))


def _result(study, backend: str, direction: str, params: tuple[str, ...]) -> SearchResult:
    finished = [t for t in study.get_trials(deepcopy=False) if t.state.name in ("COMPLETE", "PRUNED")]
    rows = [{"number": number, "state": t.state.name,
             "value": t.value if t.value is not None else (t.intermediate_values[t.last_step] if t.intermediate_values
                                                           else math.nan),
             **t.params, "epochs": t.user_attrs.get("epochs", 0), "seconds": t.user_attrs.get("seconds", math.nan)}
            for number, t in enumerate(finished)]  # failed (interrupted) trials are left out of the numbering
    return SearchResult(backend, direction, pd.DataFrame(rows), params, study)


def importance(result: SearchResult, *, seed: int = 0) -> pd.Series:
    """Each parameter's share of the objective's variance over the finished trials (fANOVA, Hutter et al. 2014),
    the same computation for every back end; sums to 1. Shown in notebooks/13 §2."""
    import optuna  # optional: the `evaluate` extra

    done = [t for t in result.study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if len(done) < 2:
        raise ValueError(f"parameter importance needs at least 2 completed trials, the {result.backend} search has "
                         f"{len(done)}")
    scores = optuna.importance.get_param_importances(
        result.study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed))
    return pd.Series(scores, name=result.backend).sort_values(ascending=False)


def importance_plot(result: SearchResult, *, seed: int = 0):
    """A bar chart of `importance(result)`. Shown in notebooks/13 §2."""
    return plots.bar(importance(result, seed=seed).to_dict(), title=f"parameter importance ({result.backend})",
                     ylabel="share of variance (fANOVA)")


def history_plot(results: Sequence[SearchResult] | Mapping[str, SearchResult], *, title: str = "best value vs trials",
                 ylabel: str = "objective", logy: bool = False):
    """Best value so far against the trial number, one line per search (same budget). Shown in notebooks/13 §2."""
    results = dict(results) if isinstance(results, Mapping) else {r.backend: r for r in results}
    if not results:
        raise ValueError("history_plot() needs at least one search result")
    lengths = {name: len(r.trials) for name, r in results.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"compare searches of the same budget; trial counts differ: {lengths}")
    n = next(iter(lengths.values()))
    return plots.lines(list(range(1, n + 1)), {name: r.best_so_far() for name, r in results.items()}, title=title,
                       xlabel="trial", ylabel=ylabel, logy=logy)
