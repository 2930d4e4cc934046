import math
import sys

import matplotlib.figure
import numpy as np
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
    with pytest.raises(KeyboardInterrupt):
        search(interrupted, SPACE, backend="optuna", trials=4, seed=5, startup_trials=2, storage=db)
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


def test_ax_search_is_seeded_resumable_and_uses_botorch(tmp_path):
    pytest.importorskip("ax")
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


def test_ax_missing_gives_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ax", None)
    with pytest.raises(ImportError, match="pip install 'ax-platform"):
        search(objective, SPACE, backend="ax", trials=2)


def test_stall_pruner_is_the_plateau_rule():
    values = [1.0, 0.8, 0.85, 0.81, 0.9, 0.7]  # best 0.8 at epoch 2, then three epochs without a new best
    reported = []

    def stalls(params, trial):
        for epoch, value in enumerate(values, 1):
            reported.append(epoch)
            trial.report(epoch, value)
        return values[-1]

    result = search(stalls, {"x": Float(0, 1)}, trials=1, pruner="stall", patience=3)
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
                          ({"direction": "up"}, "'minimize' or 'maximize'"), ({"trials": 0}, "trials must be")]:
        with pytest.raises(ValueError, match=match):
            search(objective, SPACE, **kwargs)
    with pytest.raises(ValueError, match="low < high"):
        search(objective, {"lr": Float(0.0, 1.0, log=True)})
    with pytest.raises(TypeError, match="use Float, Int or Choice"):
        search(objective, {"lr": (1e-5, 1e-3)})
    with pytest.raises(ValueError, match="diverged"):
        search(lambda p, t: t.report(1, float("nan")), {"x": Float(0, 1)}, trials=1)
    with pytest.raises(ValueError, match="same budget"):
        a = search(objective, SPACE, trials=2)
        b = search(objective, SPACE, backend="random", trials=3)
        tuning.history_plot([a, b])
