"""The shipped reference model: a DeepSeek-V3-architecture code model pretrained once on CPU, loaded offline.

`make reference-model` (tools/reference_model.py) trained it to about 20 tokens per parameter on the
permissively licensed part of the environment corpus; its weights, tokenizer, held-out blocks and receipt live in
`cookbook/models/reference_files/`. Chapters after 04 start from it in the `smoke` profile.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import DeepseekV3ForCausalLM

from cookbook.data import tokenizer as tokenizers
from cookbook.env import quiet_progress

__all__ = ["REFERENCE_FILES", "reference", "reference_heldout", "reference_receipt"]

REFERENCE_FILES = Path(__file__).resolve().parent / "reference_files"


def reference_receipt(folder: str | Path | None = None) -> dict:
    """The receipt (receipt.json) of the reference model: recipe, corpus, licences, held-out loss, curve."""
    path = Path(folder or REFERENCE_FILES) / "receipt.json"
    if not path.is_file():
        raise FileNotFoundError(f"no reference model at {path.parent} (receipt.json missing): it ships with the "
                                "cookbook's source tree; rebuild it with `make reference-model`")
    return json.loads(path.read_text())


def _verified(folder: Path) -> dict:
    receipt = reference_receipt(folder)
    for name, digest in receipt["files"].items():
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"reference model file {path} is missing; restore it from git "
                                    "(`git checkout -- cookbook/models/reference_files`) or run `make reference-model`")
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        if actual != digest:
            raise ValueError(f"reference model file {path.name} was altered: sha256 {actual[:12]}…, the receipt says "
                             f"{digest[:12]}…; restore it from git or run `make reference-model`")
    return receipt


def reference(folder: str | Path | None = None):
    """(model, tokenizer) of the shipped reference model, checksums verified, on the CPU in eval mode.

    Every file is checked against the SHA-256 its receipt records, so an altered or truncated file is an error
    that names it rather than a silently different model. Shown in notebooks/07 to 14 (and 04 beside its own run).
    """
    folder = Path(folder or REFERENCE_FILES)
    _verified(folder)
    with quiet_progress():  # no "Loading weights" bar for 6 MB
        return DeepseekV3ForCausalLM.from_pretrained(str(folder)).eval(), tokenizers.load(folder)


def reference_heldout(folder: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The held-out blocks shipped beside the model: (input_ids [n, seq_len], package index [n], package names).

    They come from packages the model never trained on, so every machine can re-measure the receipt's loss.
    """
    folder = Path(folder or REFERENCE_FILES)
    _verified(folder)
    with safe_open(str(folder / "heldout.safetensors"), framework="pt") as f:
        names = json.loads(f.metadata()["packages"])
        return f.get_tensor("input_ids"), f.get_tensor("package"), names
