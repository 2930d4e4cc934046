"""cookbook.plots: figures hold the data they were given, and partial histories give a message, not a crash."""

import math
import warnings

import matplotlib
import numpy as np
import pandas as pd
import pytest

from cookbook import plots
from cookbook.monitor.rules import Alert

matplotlib.use("Agg")


def history(n=30, val_every=10):
    steps = np.arange(1, n + 1)
    frame = pd.DataFrame(dict(step=steps, loss=5.0 / np.sqrt(steps), grad_norm=np.linspace(2.0, 0.5, n),
                              lr=np.minimum(steps / 5, 1.0) * 1e-3, update_ratio=np.full(n, 2e-3),
                              tokens_per_s=np.full(n, 1000.0), rss_gb=np.linspace(1.0, 1.2, n)))
    frame["val_loss"] = np.where(steps % val_every == 0, 5.2 / np.sqrt(steps), np.nan)
    return frame


def texts(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts]


# ------------------------------------------------------------------------------------ the original helpers
def test_figure_grid_is_flat_and_styled():
    fig, axes = plots.figure(ncols=3, nrows=2)
    assert len(axes) == 6 and not axes[0].spines["top"].get_visible()
    assert tuple(fig.get_size_inches()) == (18.0, 7.2)
    fig, (ax,) = plots.figure()
    assert tuple(fig.get_size_inches()) == (6.0, 3.6)


def test_bar_hist_lines_hold_their_data():
    fig = plots.bar({"a": 1.0, "b": 3.0})
    assert [p.get_height() for p in fig.axes[0].patches] == [1.0, 3.0]
    fig = plots.bar(pd.Series({"x": 2.0, "y": 0.5}), horizontal=True)  # a Series, as its docstring promises
    assert [p.get_width() for p in fig.axes[0].patches] == [2.0, 0.5]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["x", "y"]
    fig = plots.hist([1, 2, 2, 3], bins=3, vline=2.0)
    assert sum(p.get_height() for p in fig.axes[0].patches) == 4
    fig = plots.lines([1, 2, 3], {"y": [3, 2, 1]}, hline=1.5)
    assert list(fig.axes[0].lines[0].get_ydata()) == [3, 2, 1]
    with pytest.raises(ValueError, match="has 2 points but x has 3"):
        plots.lines([1, 2, 3], {"y": [1, 2]})
    with pytest.raises(ValueError, match="at least one value"):
        plots.bar({})


# ------------------------------------------------------------------------------------ training-run figures
def test_smooth_matches_tensorboard_debiased_ema():
    values = [1.0, 2.0, math.nan, 4.0]
    out = plots.smooth(values, 0.5)
    # by hand: avg_t = 0.5 avg_{t-1} + 0.5 v_t, divided by 1 - 0.5^t (NaN skipped, not spread)
    assert out[0] == 1.0
    assert out[1] == pytest.approx((0.25 * 1 + 0.5 * 2) / 0.75)
    assert math.isnan(out[2])
    assert out[3] == pytest.approx((0.125 * 1 + 0.25 * 2 + 0.5 * 4) / 0.875)
    with pytest.raises(ValueError, match="smoothing weight"):
        plots.smooth(values, 1.0)


def test_loss_curves_show_train_val_threshold_early_stop_and_alerts():
    frame = history()
    alerts = [Alert(12, "loss_spike", 9.0, 6.0, "spike"), Alert(20, "stalled", 1.0, 0.9, "stalled")]
    fig = plots.loss_curves(frame, threshold=1.0, early_stop=20, alerts=alerts)
    ax = fig.axes[0]
    raw, smoothed, val = ax.lines[:3]
    assert list(raw.get_ydata()) == pytest.approx(frame["loss"].tolist())
    assert list(smoothed.get_ydata()) == pytest.approx(plots.smooth(frame["loss"], 0.8).tolist())
    assert list(val.get_xdata()) == [10, 20, 30]
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["train (smoothed)", "validation", "threshold 1", "early stop (step 20)", "alert: loss_spike",
                      "alert: stalled"]


def test_loss_curves_take_a_monitor_and_its_alerts():
    from cookbook.monitor import TrainingMonitor

    mon = TrainingMonitor(hardware=False, warn=False, patience=1)
    for step, (loss, val) in enumerate([(2.0, 1.0), (1.5, 1.2)]):
        mon.step(_One(), loss, step=step)
        mon.evaluate(val, step=step)
    fig = plots.loss_curves(mon)
    assert "alert: stalled" in fig.axes[0].get_legend_handles_labels()[1]


class _One(__import__("torch").nn.Module):
    def __init__(self):
        import torch

        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))


def test_each_panel_plots_its_column():
    frame = history()
    assert list(plots.grad_norms(frame, clip=1.0).axes[0].lines[0].get_ydata()) == pytest.approx(
        frame["grad_norm"].tolist())
    assert list(plots.lr_schedule(frame).axes[0].lines[0].get_ydata()) == pytest.approx(frame["lr"].tolist())
    fig = plots.throughput(frame)
    assert list(fig.axes[0].lines[0].get_ydata()) == [1000.0] * 30
    assert list(fig.axes[1].lines[0].get_ydata()) == pytest.approx(frame["rss_gb"].tolist())  # twin axis


def test_missing_columns_give_a_message_not_a_crash():
    partial = pd.DataFrame({"step": [1, 2, 3], "loss": [3.0, 2.0, 1.0]})
    with pytest.warns(UserWarning, match="no 'grad_norm' column in this history"):
        fig = plots.grad_norms(partial)
    assert texts(fig) == ["no 'grad_norm' column in this history"]
    with pytest.warns(UserWarning):
        fig = plots.dashboard(partial)
    assert len(texts(fig)) == 5  # every panel but the loss says what is missing
    with pytest.warns(UserWarning, match="no 'loss' or 'val_loss'"):
        plots.loss_curves(pd.DataFrame({"step": []}))
    with pytest.warns(UserWarning, match="no expert load"):
        plots.expert_load_heatmap(pd.DataFrame(columns=["step", "layer", "expert", "tokens"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plots.loss_curves(pd.DataFrame({"loss": [3.0, 2.0]}))  # no step column: the index is the step


def test_grad_norm_heatmap_colours_log10_norms_and_marks_vanishing():
    norms = pd.DataFrame({"layers.0": [1e-8, 1e-7], "layers.1": [1e-2, 1e-1]}, index=pd.Index([5, 6], name="step"))
    fig = plots.grad_norm_heatmap(norms, vanish=1e-6)
    image = fig.axes[0].images[0]
    np.testing.assert_allclose(image.get_array(), np.log10(norms.T.to_numpy()))
    assert image.norm.vmin == pytest.approx(-6.0)  # below it: painted in the 'under' colour
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["layers.0", "layers.1"]


def test_expert_load_heatmap_shows_share_of_fair_load():
    wide = pd.DataFrame([[30, 10, 0, 0], [10, 10, 10, 10]], index=["layer 1", "layer 2"])
    image = plots.expert_load_heatmap(wide).axes[0].images[0]
    np.testing.assert_allclose(image.get_array(), [[3.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    assert (image.norm.vmin, image.norm.vcenter, image.norm.vmax) == (0.0, 1.0, 3.0)  # white = fair share
    long = pd.DataFrame([dict(step=s, layer=layer, expert=e, tokens=t) for s in (1, 2)
                         for layer, loads in (("layers.1", [4, 4]), ("layers.2", [8, 0])) for e, t in enumerate(loads)])
    fig = plots.expert_load_heatmap(long)  # defaults to the most imbalanced layer over steps
    assert fig.axes[0].get_title() == "expert load: layers.2"
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), [[2.0, 0.0], [2.0, 0.0]])
    with pytest.raises(ValueError, match="no layer 'layers.9'"):
        plots.expert_load_heatmap(long, layer="layers.9")


def test_dashboard_has_six_panels_and_returns_a_closed_figure():
    import matplotlib.pyplot as plt

    frame = history()
    frame["max_vio"] = np.linspace(2.0, 0.5, len(frame))
    fig = plots.dashboard(frame, title="run")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:6] == ["loss", "gradient norm", "learning rate", "update / weight ratio", "throughput and memory",
                          "MoE load imbalance"]
    assert list(fig.axes[5].lines[0].get_ydata()) == pytest.approx(frame["max_vio"].tolist())
    assert fig._suptitle.get_text() == "run"
    assert not plt.fignum_exists(fig.number)  # closed: shown once in a notebook, not twice


# ------------------------------------------------------------------------------------ a Trainer's history
@pytest.fixture(scope="module")
def trainer():
    """A 3-step run of the tiny MoE model: its history has step, loss, grad_norm ... and expert_load arrays."""
    import torch

    from cookbook import models, train

    ids = torch.randint(0, 96, (8, 16), generator=torch.Generator().manual_seed(0))
    trainer = train.Trainer(models.build("tiny", 96, seed=0), train.loader([{"input_ids": x} for x in ids], 4, seed=0),
                            config=train.TrainConfig(steps=3, log_interval=1, progress=False, device="cpu"))
    trainer.fit()
    return trainer


def test_grad_norm_heatmap_of_a_history_says_what_to_pass(trainer):
    for run, hint in ((trainer.history, r"plots\.grad_norms\(history\)"),
                      (trainer, r"plots\.grad_norms\(trainer\.history\)")):
        with pytest.raises(TypeError, match=rf"per-layer gradient norms.*layer_grad_norms.*{hint}"):
            plots.grad_norm_heatmap(run)
    with pytest.raises(TypeError, match="got a run history"):
        plots.grad_norm_heatmap(pd.DataFrame({"layers.0": ["a"]}))  # not numbers


def test_expert_load_heatmap_reads_a_trainer_history(trainer):
    history = trainer.history
    loads = np.stack(history["expert_load"].tolist()).astype(float)  # steps x MoE layers x experts, shares
    assert loads.shape == (3, 1, 8)
    fig = plots.expert_load_heatmap(history)
    assert fig.axes[0].get_title() == "expert load: MoE layer 0"
    by_hand = loads[:, 0, :] / loads[:, 0, :].mean(axis=1, keepdims=True)  # load / fair share, per step
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), by_hand)
    np.testing.assert_allclose(plots.expert_load_heatmap(trainer).axes[0].images[0].get_array(), by_hand)


def test_expert_load_heatmap_of_a_dense_history_or_a_wrong_type():
    dense = pd.DataFrame({"step": [1, 2], "loss": [3.0, 2.0], "grad_norm": [1.0, 0.5]})
    with pytest.warns(UserWarning, match="no expert load"):
        fig = plots.expert_load_heatmap(dense)
    assert texts(fig) == ["no expert load in this history"]
    with pytest.raises(TypeError, match="models.expert_load.*got a list"):
        plots.expert_load_heatmap([[1, 2], [3, 4]])
    with pytest.raises(TypeError, match=r"columns \['expert'\] are not"):
        plots.expert_load_heatmap(pd.DataFrame({"expert": ["a", "b"], "n": [1, 2]}))
