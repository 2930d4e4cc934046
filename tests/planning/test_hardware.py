"""cookbook.planning.hardware: the GPU-count table against the memory estimates, and the memory plot."""

import pandas as pd
import pytest

from cookbook import planning


def test_hardware_table():
    table = planning.hardware_table()
    assert list(table.index.get_level_values("model").unique()) == ["7B", "13B", "65B"]
    gpus = table[["24 GB GPUs", "40 GB GPUs", "80 GB GPUs"]]
    zero0 = gpus.xs("full fine-tune, bf16-mixed AdamW, ZeRO-0", level="regime")
    assert zero0.isna().all().all()  # 16 bytes/param x 6.7B = 108 GB > 80 GB, and ZeRO-0 never shards
    # inference of 65B in bf16: 130.6 GB of weights -> two 80 GB GPUs (by hand: 130.6/2 + 5.4/2 <= 72)
    assert gpus.loc[("65B", "inference, bf16"), "80 GB GPUs"] == 2
    assert gpus.loc[("7B", "full fine-tune, ZeRO-3 + CPU offload"), "24 GB GPUs"] == 1
    assert table.loc[("7B", "full fine-tune, ZeRO-3 + CPU offload"), "CPU RAM (GB)"] == round(16 * 6.738415616)
    for _, row in gpus.dropna().iterrows():
        assert row.iloc[0] >= row.iloc[1] >= row.iloc[2] >= 1  # bigger GPUs never need more of them
    for regime in gpus.index.get_level_values("regime").unique():
        counts = gpus.xs(regime, level="regime")["80 GB GPUs"].dropna().tolist()
        assert counts == sorted(counts)  # bigger models never need fewer GPUs
    # every count is the smallest that fits: n fits in 90% of 80 GB, n - 1 does not
    config = planning.llama1_config("13B")
    n = int(gpus.loc[("13B", "full fine-tune, bf16-mixed AdamW, ZeRO-3"), "80 GB GPUs"])
    fit = [planning.training_memory(config, zero_stage=3, n_gpus=k, seq_len=2048)["gpu_total"] <= 72 for k in (n - 1, n)]
    assert fit == [False, True]


def test_memory_plot():
    frame = pd.DataFrame({"7B": [100.0, 30.0], "13B": [200.0, 60.0]}, index=["ZeRO-0", "ZeRO-3"])
    fig = planning.memory_plot(frame, breakdown=frame)
    assert len(fig.axes) == 2 and fig.axes[0].get_yscale() == "log"
    assert len(fig.axes[0].lines) == 2 + 3  # two models + three capacity lines
    with pytest.raises(ValueError, match="at least one row"):
        planning.memory_plot(frame.iloc[:0])


def test_memory_plot_draws_the_numbers_it_was_given():
    frame = pd.DataFrame({"7B": [100.0, 30.0], "13B": [200.0, 60.0]}, index=["ZeRO-0", "ZeRO-3"])
    parts = pd.DataFrame({"params": [2.0, 0.5], "optimizer": [12.0, 3.0]}, index=frame.index)
    fig = planning.memory_plot(frame, breakdown=parts, capacities=(40, 80))
    lines, bars = fig.axes[0].lines, fig.axes[1].patches
    assert [list(line.get_ydata()) for line in lines[:2]] == [[100.0, 30.0], [200.0, 60.0]]
    assert [line.get_label() for line in lines] == ["7B", "13B", "40 GB GPU", "80 GB GPU"]
    assert [line.get_ydata()[0] for line in lines[2:]] == [40, 80]  # horizontal capacity lines
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["ZeRO-0", "ZeRO-3"]
    # stacked bars: optimizer sits on top of params
    assert [(b.get_y(), b.get_height()) for b in bars] == [(0, 2.0), (0, 0.5), (2.0, 12.0), (0.5, 3.0)]
