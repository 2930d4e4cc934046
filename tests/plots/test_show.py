"""plots.show: every plots.* figure appears where it is made in a notebook kernel, once, and nowhere else."""

import types

import matplotlib.pyplot as plt
from IPython.display import Image
from matplotlib.figure import Figure

from cookbook import plots
from cookbook.plots import base


class FakeKernelShell:
    def __init__(self):
        self.kernel = object()  # what a Jupyter kernel's shell has and a plain interpreter lacks
        self.execution_count = 7


def test_figure_shown_once_in_its_cell_and_again_in_a_later_cell(monkeypatch):
    shell, shown = FakeKernelShell(), []
    monkeypatch.setattr(base, "get_ipython", lambda: shell)
    monkeypatch.setattr(base, "display", shown.append)
    fig = plots.lines([0, 1, 2], {"loss": [3.0, 2.0, 1.5]}, title="t")
    assert shown == [fig] and isinstance(fig, Figure)
    assert fig.number not in plt.get_fignums()  # closed: pyplot shows no second copy when the cell ends
    fig._ipython_display_()  # the same cell returns it as its last expression: not shown twice
    assert len(shown) == 1
    shell.execution_count = 8  # a later cell displays it: shown again, as a PNG of the same figure
    fig._ipython_display_()
    assert len(shown) == 2 and isinstance(shown[1], Image) and shown[1].data.startswith(b"\x89PNG")


def test_nothing_displayed_outside_a_kernel(monkeypatch):
    shown = []
    monkeypatch.setattr(base, "display", shown.append)
    for shell in (None, types.SimpleNamespace(execution_count=1)):  # plain Python; terminal IPython (no kernel)
        monkeypatch.setattr(base, "get_ipython", lambda shell=shell: shell)
        fig = plots.bar({"a": 1.0, "b": 2.0})
        assert shown == [] and not hasattr(fig, "_ipython_display_") and fig.axes[0].patches[1].get_height() == 2.0


def test_hidden_makes_figures_without_showing_them_and_ends_with_its_block(monkeypatch):
    shell, shown = FakeKernelShell(), []
    monkeypatch.setattr(base, "get_ipython", lambda: shell)
    monkeypatch.setattr(base, "display", shown.append)
    with plots.hidden():
        fig = plots.lines([0, 1], {"loss": [2.0, 1.0]})
        assert shown == [] and not hasattr(fig, "_ipython_display_")  # the caller displays it as it likes
        assert fig.number not in plt.get_fignums()  # still closed: no copy at the end of the cell either
    assert plots.bar({"a": 1.0}) is shown[0]  # shown again after the block
