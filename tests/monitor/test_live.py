"""The live view: text lines outside Jupyter, one updated display inside it."""

import types

from cookbook.monitor import TrainingMonitor, live
from cookbook.monitor.live import LiveView, key_numbers
from cookbook.plots import base as plots_base
from tests.monitor.loops import healthy_loop, mlp


def test_live_view_prints_text_outside_jupyter(capsys):
    view = LiveView(notebook=False, text_every_s=0.0, progress=False)
    mon = healthy_loop(mlp(), steps=3)
    mon.evaluate(0.7)
    view.update(mon)
    view.close(mon)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2 and out[0].startswith("step=2  loss=") and "val loss=0.7" in out[0]
    numbers = key_numbers(mon)
    assert numbers["step"] == 2 and numbers["alerts"] == 0 and numbers["val loss"] == 0.7


def test_live_view_updates_one_display_in_jupyter(monkeypatch):
    shown = []

    class Handle:
        def __init__(self, obj):
            shown.append(("display", type(obj).__name__))

        def update(self, obj):
            shown.append(("update", type(obj).__name__))

    monkeypatch.setattr(live, "display", lambda obj, display_id=None: Handle(obj))
    # in a kernel, where plots.* show their own figures: the live view's must appear only through its handle
    monkeypatch.setattr(plots_base, "get_ipython", lambda: types.SimpleNamespace(kernel=object(), execution_count=1))
    monkeypatch.setattr(plots_base, "display", lambda obj: shown.append(("plots shows", type(obj).__name__)))
    mon = TrainingMonitor(hardware=False)
    mon.live = LiveView(mon, notebook=True, every_s=0.0, progress=False)
    healthy_loop(mlp(), steps=3, mon=mon)
    mon.close()
    assert shown[:2] == [("display", "Figure"), ("display", "HTML")]
    assert shown[2:] == [("update", "Figure"), ("update", "HTML")] * 3  # 2 more steps + the final draw


def test_in_notebook_only_inside_a_kernel(monkeypatch):
    import sys

    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert live.in_notebook() is False  # a plain script never imported IPython

    def ipython_with(shell):
        return types.SimpleNamespace(get_ipython=lambda: shell)

    monkeypatch.setitem(sys.modules, "IPython", ipython_with(None))  # imported, but no shell running
    assert live.in_notebook() is False
    terminal = types.SimpleNamespace(config={"TerminalInteractiveShell": {}})  # the `ipython` REPL
    monkeypatch.setitem(sys.modules, "IPython", ipython_with(terminal))
    assert live.in_notebook() is False
    kernel = types.SimpleNamespace(config={"IPKernelApp": {"connection_file": "k.json"}})
    monkeypatch.setitem(sys.modules, "IPython", ipython_with(kernel))
    assert live.in_notebook() is True
