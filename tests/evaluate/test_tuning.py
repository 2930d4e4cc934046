import math
import re
import sys
import time
import warnings
from types import SimpleNamespace

import matplotlib.figure
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("optuna")  # the `evaluate` extra

from cookbook.evaluate import tuning  # noqa: E402
from cookbook.evaluate.tuning import Choice, Float, Int, search  # noqa: E402
from cookbook.monitor import Plateau  # noqa: E402

SPACE = {"lr": Float(1e-5, 1e-1, log=True), "dropout": Float(0.0, 0.5), "layers": Int(1, 4)}
EPOCHS = 4


def objective(params, trial):
    """A smooth bowl (best at lr 1e-3, dropout 0.2, 2 layers) approached over epochs, like a learning curve."""
    final = (math.log10(params["lr"]) + 3) ** 2 + (params["dropout"] - 0.2) ** 2 + 0.1 * (params["layers"] - 2) ** 2
    for epoch in range(1, EPOCHS + 1):
        value = final + 1.0 / epoch
        trial.report(epoch, value)
    return value


def _params(result):
    return result.trials[list(SPACE)].to_dict("records")


@pytest.mark.parametrize("backend", ["optuna", "random"])
def test_seeded_search_repeats_and_resumes_exactly(tmp_path, backend):
    whole = search(objective, SPACE, backend=backend, trials=6, seed=3, startup_trials=2)
    db = tmp_path / "search.db"
    first = search(objective, SPACE, backend=backend, trials=4, seed=3, startup_trials=2, storage=db)
    assert len(first.trials) == 4
    resumed = search(objective, SPACE, backend=backend, trials=6, seed=3, startup_trials=2, storage=db)
    assert _params(resumed) == _params(whole)  # repeats exactly, and continues as if it never stopped
    assert list(resumed.trials.number) == list(range(6))
    other = search(objective, SPACE, backend=backend, trials=6, seed=4, startup_trials=2)
    assert _params(other) != _params(whole)
    with pytest.raises(ValueError, match="seed=3, not 4"):
        search(objective, SPACE, backend=backend, trials=7, seed=4, storage=db)


def test_a_search_interrupted_inside_a_trial_resumes_as_if_it_had_not_been(tmp_path):
    calls = []

    def interrupted(params, trial):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the third trial
        return objective(params, trial)

    db = tmp_path / "search.db"
    with pytest.raises(KeyboardInterrupt), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        search(interrupted, SPACE, backend="optuna", trials=4, seed=5, startup_trials=2, storage=db)
    assert not [w for w in caught if "could not be cast" in str(w.message)]  # told FAIL, not left for Optuna to infer
    resumed = search(objective, SPACE, backend="optuna", trials=4, seed=5, startup_trials=2, storage=db)
    whole = search(objective, SPACE, backend="optuna", trials=4, seed=5, startup_trials=2)
    assert _params(resumed) == _params(whole) and list(resumed.trials.number) == [0, 1, 2, 3]
    assert [t.state.name for t in resumed.study.trials].count("FAIL") == 1


def test_tpe_beats_its_random_start_and_reports_the_best():
    result = search(objective, SPACE, backend="optuna", trials=14, seed=0, startup_trials=4)
    values = result.trials.value.to_numpy()
    assert result.best_value == values.min()
    best = result.trials.loc[values.argmin()]
    assert result.best_params == {k: best[k] for k in SPACE}
    assert isinstance(result.best_params["layers"], int)
    assert result.best_value < values[:4].min()  # the model-based trials improved on the random ones
    so_far = result.best_so_far()
    assert (np.diff(so_far) <= 0).all() and so_far[-1] == result.best_value
    imp = tuning.importance(result)
    assert set(imp.index) == set(SPACE) and imp.sum() == pytest.approx(1.0)
    assert imp.index[0] == "lr"  # the lr term spans the largest range of the objective
    assert isinstance(tuning.importance_plot(result), matplotlib.figure.Figure)
    assert isinstance(tuning.history_plot([result]), matplotlib.figure.Figure)


def test_ax_search_is_seeded_resumable_and_uses_botorch(tmp_path, monkeypatch):
    pytest.importorskip("ax")
    monkeypatch.chdir(tmp_path)  # a search without storage writes no Ax state anywhere
    space = {"lr": Float(1e-5, 1e-1, log=True), "batch": Choice((16, 32, 64))}

    def bowl(params, trial):
        return (math.log10(params["lr"]) + 3) ** 2 + abs(params["batch"] - 32) / 32

    whole = search(bowl, space, backend="ax", trials=3, seed=1, startup_trials=2)
    db = tmp_path / "ax.db"
    search(bowl, space, backend="ax", trials=2, seed=1, startup_trials=2, storage=db)
    assert (tmp_path / "ax.db.ax.json").exists()
    resumed = search(bowl, space, backend="ax", trials=3, seed=1, startup_trials=2, storage=db)
    # the Sobol start repeats exactly; the GP's acquisition optimisation (L-BFGS) to ~1e-8
    assert list(resumed.trials.batch) == list(whole.trials.batch) and set(whole.trials.batch) <= {16, 32, 64}
    assert list(resumed.trials.lr[:2]) == list(whole.trials.lr[:2])
    assert resumed.trials.lr.to_numpy() == pytest.approx(whole.trials.lr.to_numpy(), rel=1e-6)
    assert len(set(whole.trials.lr)) == 3
    from ax import Client

    client = Client.load_from_json_file(str(tmp_path / "ax.db.ax.json"))
    nodes = [t.generator_runs[0]._generation_node_name for t in client._experiment.trials.values()]
    assert nodes == ["CenterOfSearchSpace", "Sobol", "MBM"], nodes  # the start, then BoTorch's GP (MBM)
    assert client._experiment.optimization_config.objective.minimize
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ax.db", "ax.db.ax.json"]


def test_ax_missing_gives_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ax", None)
    with pytest.raises(ImportError, match=r"^the ax back end needs Ax: pip install 'ax-platform>=1.3,<2' \(it brings "
                                          "BoTorch and GPyTorch\\), or use backend='optuna'"):
        search(objective, SPACE, backend="ax", trials=2)


def test_stall_pruner_is_the_plateau_rule():
    values = [1.0, 0.8, 0.85, 0.81, 0.9, 0.7]  # best 0.8 at epoch 2, then three epochs without a new best
    reported = []

    def stalls(params, trial):
        for epoch, value in enumerate(values, 1):
            reported.append(epoch)
            trial.report(epoch, value)
        return values[-1]

    result = search(stalls, {"x": Float(0, 1)}, trials=1, pruner="stall")  # the default patience, 3
    rule = Plateau(3)
    stop = next(e for e, v in enumerate(values, 1) if rule.update(e, v) is not None)
    assert reported == list(range(1, stop + 1)) == [1, 2, 3, 4, 5]
    row = result.trials.iloc[0]
    assert row.state == "COMPLETE" and row.value == 0.8 and row.epochs == 5  # early stopping keeps the best


def test_median_pruner_stops_trials_worse_than_the_median():
    def curve(params, trial):
        for epoch in range(1, 6):
            trial.report(epoch, params["x"] * 10 + 1 / epoch)
        return params["x"] * 10 + 0.2

    result = search(curve, {"x": Float(0, 1)}, backend="random", trials=12, seed=0, pruner="median",
                    startup_trials=3)
    pruned = result.trials[result.trials.state == "PRUNED"]
    assert len(pruned) > 0 and (pruned.epochs < 5).all()
    assert result.best_value == result.trials[result.trials.state == "COMPLETE"].value.min()


def test_bad_arguments_name_the_valid_ones():
    for kwargs, match in [({"backend": "hyperopt"}, "valid: optuna, ax, random"),
                          ({"pruner": "hyperband"}, "valid: none, median, stall"),
                          ({"direction": "up"}, "'minimize' or 'maximize'"), ({"trials": 0}, "trials must be"),
                          ({"startup_trials": 0}, "startup_trials must be a positive int, got 0")]:
        with pytest.raises(ValueError, match=match):
            search(objective, SPACE, **kwargs)
    with pytest.raises(ValueError, match="low < high"):
        search(objective, {"lr": Float(0.0, 1.0, log=True)})
    with pytest.raises(ValueError, match="patience must be a positive int, got 0"):
        search(objective, SPACE, pruner="stall", patience=0)
    assert len(search(objective, SPACE, trials=1, patience=0).trials) == 1  # patience is the stall rule's alone
    with pytest.raises(TypeError, match="use Float, Int or Choice"):
        search(objective, {"lr": (1e-5, 1e-3)})
    with pytest.raises(ValueError, match="diverged"):
        search(lambda p, t: t.report(1, float("nan")), {"x": Float(0, 1)}, trials=1)
    with pytest.raises(ValueError, match="same budget"):
        a = search(objective, SPACE, trials=2)
        b = search(objective, SPACE, backend="random", trials=3)
        tuning.history_plot([a, b])


def test_check_space_takes_the_edges_and_refuses_past_them():
    for ok in [Float(-1.0, 1.0), Float(1e-9, 1.0, log=True), Int(1, 2), Int(1, 2, log=True), Choice((1, 2))]:
        tuning._check_space({"p": ok})
    for bad in [Float(1.0, 1.0), Int(3, 2), Float(0.0, 1.0, log=True), Int(0, 4, log=True)]:
        with pytest.raises(ValueError, match=rf"parameter 'p': need low < high \(and low > 0 on a log scale\), "
                                             rf"got {re.escape(repr(bad))}"):
            tuning._check_space({"p": bad})
    with pytest.raises(ValueError, match=r"parameter 'p': a Choice needs at least two values, got \(1,\)"):
        tuning._check_space({"p": Choice((1,))})
    with pytest.raises(ValueError, match=r"^the search space is empty: give at least one parameter, e\.g\. "
                                         r"\{'lr': Float\(1e-5, 1e-3, log=True\)\}$"):
        tuning._check_space({})
    with pytest.raises(TypeError, match="parameter 'p' is a tuple; use Float, Int or Choice"):
        tuning._check_space({"p": (1, 2)})


def test_distributions_are_optunas():
    from optuna import distributions as d

    space = {"lr": Float(1e-5, 1e-1, log=True), "n": Int(1, 8), "m": Int(2, 64, log=True), "b": Choice((16, 32))}
    assert tuning._distributions(space) == {"lr": d.FloatDistribution(1e-5, 1e-1, log=True),
                                            "n": d.IntDistribution(1, 8), "m": d.IntDistribution(2, 64, log=True),
                                            "b": d.CategoricalDistribution([16, 32])}


def _study(direction):
    return SimpleNamespace(direction=SimpleNamespace(name=direction))


def test_stall_pruner_replays_the_plateau_rule_in_either_direction():
    rising = SimpleNamespace(intermediate_values={3: 0.3, 1: 0.1, 2: 0.5, 4: 0.4})  # unordered, as a dict may be
    assert tuning.StallPruner(2).prune(_study("MAXIMIZE"), rising)  # best 0.5 at epoch 2, two lower since
    assert not tuning.StallPruner(3).prune(_study("MAXIMIZE"), rising)
    assert tuning.StallPruner(3).prune(_study("MINIMIZE"), rising)  # best 0.1 at epoch 1, three higher since
    assert not tuning.StallPruner(4).prune(_study("MINIMIZE"), rising)
    assert tuning.StallPruner().prune(_study("MINIMIZE"), rising)  # patience 3 by default
    creeping = SimpleNamespace(intermediate_values={1: 1.0, 2: 0.95, 3: 0.92})
    assert not tuning.StallPruner(2).prune(_study("MINIMIZE"), creeping)
    assert tuning.StallPruner(2, min_delta=0.1).prune(_study("MINIMIZE"), creeping)  # gains under min_delta
    rising_slowly = SimpleNamespace(intermediate_values={1: 1.0, 2: 1.07, 3: 1.08})
    assert tuning.StallPruner(2, min_delta=0.1).prune(_study("MAXIMIZE"), rising_slowly)
    assert not tuning.StallPruner(2, min_delta=0.05).prune(_study("MAXIMIZE"), rising_slowly)
    with pytest.raises(ValueError, match="patience must be a positive int"):
        tuning.StallPruner(0)
    with pytest.raises(ValueError, match="min_delta must be >= 0"):
        tuning.StallPruner(3, min_delta=-0.1)


class _Stub:
    """An Optuna trial that records the reports and whose pruner always says stop."""

    number, params = 7, {"x": 0.5}

    def __init__(self):
        self.reports = []

    def report(self, value, step):
        self.reports.append((step, value))

    def should_prune(self):
        return True


def test_trial_report_records_and_asks_the_pruner_only_when_there_is_one():
    stub = _Stub()
    trial = tuning.Trial(stub, "none")
    trial.report(2.0, np.float32(0.5))
    assert trial.values == {2: 0.5} and stub.reports == [(2, 0.5)] and (trial.number, trial.params) == (7, {"x": 0.5})
    with pytest.raises(tuning.Pruned, match="trial 7 stopped at epoch 3 by the median pruner"):
        tuning.Trial(stub, "median").report(3, 1.0)
    for bad in (float("inf"), float("-inf")):
        with pytest.raises(ValueError, match=f"trial 7 reported {bad} at epoch 4: the objective diverged"):
            trial.report(4, bad)


def test_best_so_far_by_hand():
    trials = pd.DataFrame({"state": ["PRUNED", "COMPLETE", "COMPLETE", "PRUNED", "COMPLETE"],
                           "value": [9.0, 3.0, 1.0, 0.5, 2.0]})
    low = tuning.SearchResult("random", "minimize", trials, (), None)
    high = tuning.SearchResult("random", "maximize", trials, (), None)
    # a pruned value is not a result: before the first one the best is the worst possible
    assert low.best_so_far().tolist() == [math.inf, 3.0, 1.0, 1.0, 1.0]
    assert high.best_so_far().tolist() == [-math.inf, 3.0, 3.0, 3.0, 3.0]
    assert (low.best_value, high.best_value) == (1.0, 3.0)


def test_median_pruner_by_hand():
    # Trial 1 is worse than trial 0 from the start: pruned at epoch 1, the first epoch after the warm-up step 0,
    # with the value it reached there (what a pruned trial passes on).
    curves = [1.0, 5.0, 0.5]
    rows = []

    def curve(params, trial):
        for epoch in range(4):
            trial.report(epoch, curves[trial.number] + epoch / 10)
        return curves[trial.number] + 0.3

    result = search(curve, {"x": Float(0, 1)}, backend="random", trials=3, pruner="median", startup_trials=1,
                    on_trial=rows.append)
    assert result.trials[["state", "value", "epochs"]].to_dict("list") == {
        "state": ["COMPLETE", "PRUNED", "COMPLETE"], "value": [1.3, 5.1, 0.8], "epochs": [3, 1, 3]}
    assert [(r["state"], r["value"]) for r in rows] == [("COMPLETE", 1.3), ("PRUNED", 5.1), ("COMPLETE", 0.8)]


def test_stall_pruner_when_maximizing_keeps_the_highest_value_and_reports_each_trial():
    values = [0.1, 0.5, 0.3, 0.2, 0.4, 0.9]  # best 0.5 at epoch 2, two epochs without a new best: stop at 4
    rows = []

    def rises(params, trial):
        for epoch, value in enumerate(values, 1):
            trial.report(epoch, value)
        return values[-1]

    result = search(rises, {"x": Float(0, 1)}, trials=1, direction="maximize", pruner="stall", patience=2,
                    on_trial=rows.append)
    x = result.trials.x[0]
    assert rows == [{"backend": "optuna", "number": 0, "state": "COMPLETE", "value": 0.5, "x": x, "epochs": 4,
                     "curve": dict(enumerate(values[:4], 1))}]
    assert result.study.direction.name == "MAXIMIZE" and result.best_value == 0.5


def test_a_trial_without_reports_has_zero_epochs_and_its_seconds():
    def wait(params, trial):
        time.sleep(0.02)
        return params["x"]

    rows = []
    result = search(wait, {"x": Float(0, 1)}, backend="random", trials=2, name="timed", on_trial=rows.append)
    assert result.trials.epochs.tolist() == [0, 0] and result.study.study_name == "timed-random"
    assert [(r["epochs"], r["curve"]) for r in rows] == [(0, {}), (0, {})]
    assert ((0.02 <= result.trials.seconds) & (result.trials.seconds < 5)).all()


def test_each_trial_is_seeded_from_the_seed_and_the_trials_before_it():
    # the reference: a fresh RandomSampler per trial, seeded as the module says, in a fresh Optuna study
    from optuna import create_study
    from optuna import distributions as d
    from optuna.samplers import RandomSampler

    space = {"lr": d.FloatDistribution(1e-5, 1e-1, log=True), "dropout": d.FloatDistribution(0.0, 0.5),
             "layers": d.IntDistribution(1, 4)}
    seeds = [int(np.random.SeedSequence([7, i]).generate_state(1)[0]) for i in range(3)]
    expected = [create_study(sampler=RandomSampler(seed=s)).ask(space).params for s in seeds]
    random = search(objective, SPACE, backend="random", trials=3, seed=7)
    assert _params(random) == expected
    tpe = search(objective, SPACE, backend="optuna", trials=3, seed=7, startup_trials=2)
    assert _params(tpe)[:2] == expected[:2] and _params(tpe)[2] != expected[2]  # TPE's model from trial 2


def test_storage_records_the_setup_and_fails_a_crashed_runs_trial(tmp_path):
    import optuna

    db = tmp_path / "search.db"
    crashed = optuna.create_study(study_name="search-random", storage=f"sqlite:///{db}")
    crashed.ask()  # left RUNNING, as by a killed process
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = search(objective, SPACE, backend="random", trials=2, seed=3, storage=db)
    assert not [w for w in caught if "could not be cast" in str(w.message)]  # told FAIL, not left for Optuna to infer
    assert result.study.user_attrs == {"backend": "random", "seed": 3, "space": repr(sorted(SPACE.items()))}
    assert [t.state.name for t in result.study.trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    with pytest.raises(ValueError, match="space=.*; use another name or storage to start a new search"):
        search(objective, {"lr": Float(1e-5, 1e-1, log=True)}, backend="random", trials=3, seed=3, storage=db)


def test_result_rows_of_trials_the_search_did_not_run():
    import optuna

    study = optuna.create_study()
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    study.add_trial(optuna.trial.create_trial(params={"x": 0.5}, distributions=dist, value=2.0))
    study.add_trial(optuna.trial.create_trial(params={"x": 0.25}, distributions=dist, state=optuna.trial.TrialState.FAIL))
    study.add_trial(optuna.trial.create_trial(params={"x": 0.75}, distributions=dist,
                                              state=optuna.trial.TrialState.PRUNED, intermediate_values={1: 4.0, 3: 3.0}))
    study.add_trial(optuna.trial.create_trial(params={"x": 1.0}, distributions=dist, state=optuna.trial.TrialState.PRUNED))
    rows = tuning._result(study, "random", "minimize", ("x",)).trials
    assert rows.drop(columns="value").to_dict("list") == {
        "number": [0, 1, 2], "state": ["COMPLETE", "PRUNED", "PRUNED"], "x": [0.5, 0.75, 1.0], "epochs": [0, 0, 0],
        "seconds": [pytest.approx(math.nan, nan_ok=True)] * 3}
    assert rows.value.tolist()[:2] == [2.0, 3.0] and math.isnan(rows.value[2])  # a pruned trial: its last report


def test_importance_is_optunas_fanova_with_the_seed():
    import optuna

    result = search(objective, SPACE, backend="random", trials=6, seed=0)
    for seed in (0, 1):
        reference = optuna.importance.get_param_importances(
            result.study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed))
        scores = tuning.importance(result, seed=seed) if seed else tuning.importance(result)  # seed 0 by default
        assert scores.to_dict() == reference and scores.name == "random" and scores.is_monotonic_decreasing
    two = search(objective, SPACE, backend="random", trials=2)
    assert len(tuning.importance(two)) == 3  # two completed trials are enough
    with pytest.raises(ValueError, match="needs at least 2 completed trials, the random search has 1"):
        tuning.importance(search(objective, SPACE, backend="random", trials=1))
    bars = tuning.importance_plot(result, seed=1).axes[0]
    assert bars.get_title() == "parameter importance (random)" and bars.get_ylabel() == "share of variance (fANOVA)"
    assert [p.get_height() for p in bars.patches] == pytest.approx(tuning.importance(result, seed=1).to_list())
    default = tuning.importance_plot(result).axes[0]
    assert [p.get_height() for p in default.patches] == pytest.approx(tuning.importance(result, seed=0).to_list())


def test_history_plot_draws_the_best_so_far_per_search():
    a = search(objective, SPACE, backend="random", trials=3)
    b = search(objective, SPACE, backend="optuna", trials=3, seed=1)
    ax = tuning.history_plot({"first": a, "second": b}, title="t", ylabel="loss", logy=True).axes[0]
    assert [line.get_label() for line in ax.lines] == ["first", "second"]
    assert ax.lines[0].get_xdata().tolist() == [1, 2, 3] and ax.lines[1].get_ydata().tolist() == b.best_so_far().tolist()
    assert (ax.get_title(), ax.get_ylabel(), ax.get_xlabel(), ax.get_yscale()) == ("t", "loss", "trial", "log")
    default = tuning.history_plot([a]).axes[0]
    assert [line.get_label() for line in default.lines] == ["random"]  # a list: each search by its back end
    assert (default.get_title(), default.get_ylabel(), default.get_yscale()) == ("best value vs trials", "objective",
                                                                                 "linear")
    with pytest.raises(ValueError, match=r"^history_plot\(\) needs at least one search result$"):
        tuning.history_plot([])


def test_ax_gets_the_space_the_direction_and_each_value(tmp_path):
    pytest.importorskip("ax")
    from ax import Client

    space = {"lr": Float(1e-5, 1e-1, log=True), "n": Int(1, 8), "flag": Choice((True, False)),
             "opt": Choice(("adam", "sgd")), "w": Choice((0.5, 1.5)), "b": Choice((16, 32)), "mix": Choice((0, 0.5, 1.0))}
    result = search(lambda p, t: p["lr"], space, backend="ax", trials=2, seed=1, startup_trials=2,
                    direction="maximize", storage=tmp_path / "ax.db")
    experiment = Client.load_from_json_file(str(tmp_path / "ax.db.ax.json"))._experiment
    parameters = {name: (p.parameter_type.name, getattr(p, "log_scale", None), getattr(p, "lower", None),
                         getattr(p, "upper", None), getattr(p, "values", None))
                  for name, p in experiment.search_space.parameters.items()}
    assert parameters == {"lr": ("FLOAT", True, 1e-5, 1e-1, None), "n": ("INT", False, 1, 8, None),
                          "flag": ("BOOL", False, None, None, [False, True]),
                          "opt": ("STRING", False, None, None, ["adam", "sgd"]),
                          "w": ("FLOAT", False, None, None, [0.5, 1.5]), "b": ("INT", False, None, None, [16, 32]),
                          "mix": ("FLOAT", False, None, None, [0.0, 0.5, 1.0])}  # as int, 0.5 would become 0
    objective = experiment.optimization_config.objective
    assert objective.metric_names == ["objective"] and not objective.minimize
    assert result.trials.value.tolist() == result.trials.lr.tolist()
    assert experiment.lookup_data().df["mean"].tolist() == pytest.approx(result.trials.value.tolist(), rel=1e-6)


def test_an_ax_trial_that_raises_fails_and_the_error_reaches_the_caller():
    pytest.importorskip("ax")

    def boom(params, trial):
        raise ArithmeticError("boom")

    with pytest.raises(ArithmeticError, match="boom"):
        search(boom, {"x": Float(0, 1)}, backend="ax", trials=1)
    with pytest.raises(TypeError, match=r"parameter 'x': the ax back end needs Choice values of one type, got \('a', 1\)"):
        search(boom, {"x": Choice(("a", 1))}, backend="ax", trials=1)


def test_the_documented_defaults():
    # 20 trials, seed 0, minimize, TPE after 4 random startup trials
    default = search(objective, SPACE, backend="random")
    assert _params(default) == _params(search(objective, SPACE, backend="random", trials=20, seed=0))
    assert default.best_value == default.trials.value.min()
    tpe = _params(search(objective, SPACE, trials=5))
    assert tpe[:4] == _params(default)[:4] and tpe[4] != _params(default)[4]


def test_the_ax_start_is_axs_own_for_the_seed():
    pytest.importorskip("ax")
    from ax import Client, RangeParameterConfig

    # the reference: a Client configured by hand as the module documents (seeded, `startup_trials` initial trials)
    client = Client(random_seed=2)
    client.configure_experiment(parameters=[RangeParameterConfig(name="lr", bounds=(1e-5, 1e-1), scaling="log",
                                                                 parameter_type="float")])
    client.configure_optimization(objective="-objective")
    client.configure_generation_strategy(initialization_budget=2, initialization_random_seed=2)
    expected = []
    for _ in range(2):
        ((index, params),) = client.get_next_trials(max_trials=1).items()
        expected.append(params["lr"])
        client.complete_trial(index, raw_data={"objective": params["lr"]})
    result = search(lambda p, t: p["lr"], {"lr": Float(1e-5, 1e-1, log=True)}, backend="ax", trials=2, seed=2,
                    startup_trials=2)
    assert result.trials.lr.tolist() == expected
