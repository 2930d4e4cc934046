import numpy as np
import pytest
import torch

from cookbook import deploy

SHAPES = [(1, 5), (3, 11)]  # neither is the example shape (2, 8): the axes must be dynamic


def _eager(model, ids):
    with torch.no_grad():
        return deploy.LogitsOnly(model).eval()(ids)


@pytest.mark.parametrize("name", ["moe", "dense"])
def test_torch_export_is_exact_at_other_shapes(request, programs, name):
    model, program = request.getfixturevalue(name), programs[name]
    for shape in SHAPES:
        ids = torch.randint(0, model.config.vocab_size, shape, generator=torch.Generator().manual_seed(1))
        assert torch.equal(program.module()(ids), _eager(model, ids))
    # the default MoE experts path is captured as transformers' custom op, which ONNX cannot translate
    assert deploy.custom_ops(program) == (["transformers::grouped_mm_fallback"] if name == "moe" else [])


def test_onnx_export_switches_moe_experts_and_restores_them(onnx_files, moe):
    result = onnx_files["moe"]
    assert result.experts == deploy.EXPERTS_FOR_ONNX == "batched_mm"
    assert moe.get_experts_implementation() == {"": "grouped_mm"}  # put back after the export
    assert onnx_files["dense"].experts == ""
    vocab = moe.config.vocab_size
    for res in onnx_files.values():
        assert res.inputs == {"input_ids": ["batch", "seq"]}
        assert res.outputs == {"logits": ["batch", "seq", vocab]}
        assert res.path.stat().st_size > 0


@pytest.mark.parametrize("name", ["moe", "dense"])
def test_onnx_runtime_matches_pytorch_at_every_level(request, onnx_files, name):
    model = request.getfixturevalue(name)
    table = deploy.parity(model, onnx_files[name].path, SHAPES, levels=("disable", "all"), repeats=1)
    assert list(table.index) == ["torch", "disable", "all"]
    assert (table.loc[["disable", "all"], "max_abs_diff"] < 1e-4).all(), table
    # ORT's optimiser only ever removes or fuses nodes
    assert table.loc["all", "nodes"] <= table.loc["disable", "nodes"]


def test_onnx_export_names_the_op_that_blocks_it(programs, tmp_path):
    # the MoE captured on its default experts path: what a naive export hits
    with pytest.raises(ValueError, match="transformers::grouped_mm_fallback.*'batched_mm'"):
        deploy.onnx_from_program(programs["moe"], tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_experts_implementation_restores_on_error_and_ignores_dense(moe, dense):
    with pytest.raises(RuntimeError, match="boom"), deploy.experts_implementation(moe, "batched_mm"):
        assert moe.get_experts_implementation() == {"": "batched_mm"}
        raise RuntimeError("boom")
    assert moe.get_experts_implementation() == {"": "grouped_mm"}
    with deploy.experts_implementation(dense, "batched_mm"):
        assert dense.get_experts_implementation() == {"": "eager"}


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(2, 8), "int64 tensor of shape"),
    (torch.zeros(8, dtype=torch.long), r"shape \(8,\)"),
    (torch.zeros(1, 8, dtype=torch.long), "batch >= 2 and seq >= 2"),
    ([[1, 2], [3, 4]], "got list"),
])
def test_bad_example_ids_are_named(moe, bad, match):
    with pytest.raises(ValueError, match=match):
        deploy.torch_export(moe, bad)


def test_bad_dynamic_bounds_and_levels(onnx_files):
    with pytest.raises(ValueError, match="max_batch must be a positive int, got 0"):
        deploy.dynamic_shapes(max_batch=0)
    with pytest.raises(ValueError, match="'fast'.*disable, basic, extended, all"):
        deploy.ort_session(onnx_files["dense"].path, "fast")


def test_torchscript_is_legacy_but_matches_for_the_dense_twin(dense, example_ids):
    traced, notes = deploy.torchscript_trace(dense, example_ids)
    ids = torch.randint(0, dense.config.vocab_size, (3, 11), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        np.testing.assert_array_equal(traced(ids).numpy(), _eager(dense, ids).numpy())
    assert any(n.startswith("DeprecationWarning: `torch.jit.trace` is deprecated") for n in notes), notes


def test_export_declares_its_limits_and_the_runner_reads_them(programs, onnx_files, dense, tok):
    assert deploy.export_limits(programs["dense"]) == {"max_batch": 64, "max_seq": 256}  # conftest's export
    runner = deploy.OnnxRunner(onnx_files["dense"].path, "basic")
    assert (runner.max_batch, runner.max_seq, runner.vocab_size) == (64, 256, len(tok))
    ids = torch.randint(0, len(tok), (2, 5), generator=torch.Generator().manual_seed(3))
    assert np.abs(runner(ids) - _eager(dense, ids).numpy()).max() < 1e-4
    boundary = np.full((64, 256), len(tok) - 1, dtype=np.int64)  # the largest batch, length and id all accepted
    boundary[0, 0] = 0
    assert runner(boundary).shape == (64, 256, len(tok))


@pytest.mark.parametrize("ids, match", [
    ([[5, -1, 7]], r"token id -1 at \[0, 1\] is outside the vocabulary: valid ids are 0\.\.319"),
    ([[5, 320]], r"token id 320 at \[0, 1\] is outside the vocabulary: valid ids are 0\.\.319 \(1 bad id"),
    ([[]], r"empty sequences \(seq 0\)"),
    (np.zeros((0, 3), dtype=np.int64), r"no sequence \(batch 0\)"),
    (np.zeros((65, 2), dtype=np.int64), "batch 65 exceeds the export's limit of 64"),
    (np.zeros((1, 257), dtype=np.int64), "sequence length 257 exceeds the export's limit of 256 tokens"),
    ([1, 2, 3], r"shape \(batch, seq\), got 1 dimension"),
    ([[1.5, 2.0]], "integer token ids, got dtype float64"),
])
def test_the_onnx_runner_refuses_what_the_model_would_not_take(onnx_files, ids, match):
    runner = deploy.OnnxRunner(onnx_files["dense"].path, "basic")
    with pytest.raises(ValueError, match=match):
        runner(ids)


def test_runner_needs_limits_for_a_file_that_declares_none(onnx_files, tmp_path):
    import onnx

    model = onnx.load(str(onnx_files["dense"].path))
    del model.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(model, str(foreign))
    with pytest.raises(ValueError, match="declares no max_batch .*pass max_batch"):
        deploy.OnnxRunner(foreign, "basic")
    runner = deploy.OnnxRunner(foreign, "basic", max_batch=2, max_seq=8)
    with pytest.raises(ValueError, match="batch 3 exceeds the export's limit of 2"):
        runner(np.zeros((3, 4), dtype=np.int64))


def test_check_input_ids_by_itself_takes_tensors_and_any_integer_dtype_at_the_limits():
    from cookbook.deploy.export import check_input_ids

    limits = {"vocab_size": 10, "max_batch": 2, "max_seq": 3}
    ids = check_input_ids(torch.tensor([[0, 9, 4], [9, 0, 1]], dtype=torch.int32), **limits)
    assert ids.dtype == np.int64 and ids.tolist() == [[0, 9, 4], [9, 0, 1]]
    assert check_input_ids(np.array([[9]], dtype=np.uint8), **limits).tolist() == [[9]]
    with pytest.raises(ValueError, match=r"^token id 11 at \[1, 1\] .* 0\.\.9 \(2 bad id\(s\) in all\)$"):
        check_input_ids([[0, 1, 2], [3, 11, 10]], **limits)  # the first bad id in row order is named
