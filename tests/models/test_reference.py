"""The shipped reference model: files match their receipt, the receipt's held-out loss re-measured here, altered or
missing files refused, and the training command (tools/reference_model.py) resumes bit-exactly from its checkpoint."""

import dataclasses
import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cookbook import checkpoint, models

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("reference_model", ROOT / "tools" / "reference_model.py")
reference_model = sys.modules["reference_model"] = importlib.util.module_from_spec(_spec)  # dataclasses need it
_spec.loader.exec_module(reference_model)


def test_heldout_loss_of_the_receipt_remeasured_on_the_shipped_blocks():
    model, tok = models.reference()
    receipt = models.reference_receipt()
    ids, package, names = models.reference_heldout()
    assert model.config.vocab_size == len(tok) == receipt["recipe"]["vocab_size"]
    assert ids.shape == (receipt["heldout"]["blocks"], receipt["recipe"]["seq_len"]) and len(package) == len(ids)
    with torch.no_grad():  # the mean next-token cross-entropy of each block, by hand
        logits = torch.cat([model(input_ids=ids[i:i + 32].long()).logits for i in range(0, len(ids), 32)]).double()
    per_block = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:].long(), reduction="none").mean(1)
    assert per_block.mean().item() == pytest.approx(receipt["heldout"]["loss"], abs=1e-4)
    assert math.exp(per_block.mean().item()) == pytest.approx(receipt["heldout"]["perplexity"], abs=0.01)
    for index, name in enumerate(names):
        if (package == index).any():
            assert per_block[package == index].mean().item() == pytest.approx(
                receipt["heldout"]["per_package"][name], abs=1e-4)
    assert receipt["heldout"]["loss"] < receipt["heldout"]["smoke_60_steps"]["loss"]


def test_altered_missing_or_absent_files_are_refused_by_name(tmp_path):
    folder = tmp_path / "reference"
    shutil.copytree(models.REFERENCE_FILES, folder)
    models.reference(folder)  # an intact copy loads
    with (folder / "heldout.safetensors").open("r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))  # one bit flipped
    with pytest.raises(ValueError, match="reference model file heldout.safetensors was altered: sha256"):
        models.reference(folder)
    (folder / "heldout.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"heldout.safetensors is missing; restore it from git"):
        models.reference_heldout(folder)
    (folder / "receipt.json").unlink()
    with pytest.raises(FileNotFoundError, match="receipt.json missing.*make reference-model"):
        models.reference(folder)


def test_receipt_names_every_file_and_only_permissive_licences():
    receipt = json.loads((models.REFERENCE_FILES / "receipt.json").read_text())
    assert sorted(receipt["files"]) == sorted(reference_model.FILES)
    used = [row for row in receipt["licences"] if row["kept"]]
    assert used and all(reference_model.licences.is_permissive(row["licence"]) for row in used)
    assert receipt["tokens_seen"] == receipt["steps"] * receipt["recipe"]["batch_size"] * receipt["recipe"]["seq_len"]
    assert 19 <= receipt["tokens_seen"] / receipt["parameters"] <= 21  # Chinchilla's ~20 tokens per parameter


def test_parses_trims_to_the_last_complete_line():
    prompt = 'def f(x):\n    """Double."""\n'
    assert reference_model.parses(prompt, "    y = 2 * x\n    return y\n    z = (1,")  # the cut line is dropped
    assert not reference_model.parses(prompt, "    y = (2 *\n    x")  # the unclosed bracket stays
    assert not reference_model.parses(prompt, "    return_type_type_type")  # no complete line: no code written
    assert not reference_model.parses(prompt, "\n\n")  # blank lines only


def test_training_command_resumes_bit_exactly_from_its_checkpoint(tmp_path):
    recipe = reference_model.Recipe(size="tiny", corpus="stdlib", vocab_size=512, seq_len=64, batch_size=4, steps=6,
                                    checkpoint_interval=100, eval_points=2, data_fraction=0.05)
    straight = reference_model.train(recipe, tmp_path / "straight")
    reference_model.train(recipe, tmp_path / "pieces", until=3)  # stops after step 3 with a checkpoint there
    assert checkpoint.latest(tmp_path / "pieces" / "checkpoints").name == "step-000003.safetensors"
    resumed = reference_model.train(recipe, tmp_path / "pieces")
    assert straight.step == resumed.step == 6
    a, _ = checkpoint.read(checkpoint.latest(tmp_path / "straight" / "checkpoints"))
    b, _ = checkpoint.read(checkpoint.latest(tmp_path / "pieces" / "checkpoints"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # weights, AdamW moments, RNG
    with pytest.raises(SystemExit, match="holds a run with other settings"):
        reference_model.train(dataclasses.replace(recipe, batch_size=8), tmp_path / "pieces")
