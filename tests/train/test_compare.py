import pytest
import torch

from cookbook import models, train


def test_compare_trains_one_fresh_model_per_precision():
    ids = torch.randint(0, 64, (16, 16), generator=torch.Generator().manual_seed(0))
    loader = train.loader([{"input_ids": row} for row in ids], 4)
    config = train.TrainConfig(steps=3, log_interval=1, progress=False, device="cpu")
    with pytest.warns(UserWarning, match="plain fp32"):
        table, histories = train.compare_precisions(lambda: models.build("tiny", 64, seed=0), loader, ("fp32", "tf32", "fp16"),
                                       config)
    assert list(table.index) == ["fp32", "tf32", "fp16"] and set(histories) == {"fp32", "tf32", "fp16"}
    assert table.loc["fp32", "speedup"] == 1.0
    # tf32 on a CPU is fp32: same model, same data, same numbers
    assert histories["tf32"]["loss"].tolist() == histories["fp32"]["loss"].tolist()
    assert "plain fp32" in table.loc["tf32", "note"] and table.loc["fp32", "note"] == ""
    skipped = table.loc["fp16", "skipped_steps"]
    assert skipped == histories["fp16"]["skipped"].sum()
    # torch's scaler starts at 2^16 and halves on each skipped step (growth only after 2000 clean steps)
    assert histories["fp16"]["scale"].iloc[-1] == 2.0**16 / 2**skipped
    assert histories["fp16"]["loss"].iloc[0] == pytest.approx(histories["fp32"]["loss"].iloc[0], rel=1e-2)
