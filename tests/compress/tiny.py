"""The tiny DeepSeek-V3 of the compression tests (layer 0 dense, layer 1 MoE with 8 routed experts) and its data."""

import importlib.util

import pytest

from cookbook import models
from tests import blocks
from tests.blocks import VOCAB

needs_torchao = pytest.mark.skipif(importlib.util.find_spec("torchao") is None,
                                   reason="the quant extra (torchao) is not installed")


def loader(seed=0, n=64, batch=8, shuffle=True):
    return blocks.loader(n, batch=batch, seed=seed, shuffle=shuffle)


def tiny(seed=0):
    return models.build("tiny", VOCAB, seed=seed).eval()
