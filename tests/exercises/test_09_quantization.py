"""Solutions to the exercises of notebooks/09 (quantization and sparsity), each checked against an independent result."""

import torch
from torch import nn

from cookbook import compress


# ----------------------------------------------------------------------------- exercise 1: per-group scales
def int8_groups(weight: torch.Tensor, group_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one scale per `group_size` consecutive inputs of each row: (codes, scales per group)."""
    rows, cols = weight.shape
    groups = weight.reshape(rows, cols // group_size, group_size)
    scale = groups.abs().amax(dim=-1, keepdim=True) / 127.5
    codes = torch.round(groups * (1 / scale)).clamp(-128, 127).to(torch.int8)
    return codes.reshape(rows, cols), scale.squeeze(-1)


def dequantize_groups(codes: torch.Tensor, scale: torch.Tensor, group_size: int = 32) -> torch.Tensor:
    rows, cols = codes.shape
    return (codes.reshape(rows, cols // group_size, group_size).float() * scale.unsqueeze(-1)).reshape(rows, cols)


def test_exercise_1_per_group_scales():
    torch.manual_seed(0)
    weight = torch.randn(16, 128)
    weight[3, 5] = 40.0  # one outlier: with a scale per row it coarsens the whole row's grid
    codes, scale = int8_groups(weight)
    error = (dequantize_groups(codes, scale) - weight).abs()
    step = scale.repeat_interleave(32, dim=1)
    assert (error <= step / 2 + 1e-6).all()  # each weight off by at most half its group's step
    # independent check: a group is a row of the reshaped matrix, so the library's per-row recipe gives the same codes
    row_codes, _ = compress.int8_rows(weight.reshape(-1, 32))
    assert torch.equal(codes, row_codes.reshape(16, 128))
    per_row_codes, per_row_scale = compress.int8_rows(weight)
    per_row_error = (per_row_codes.float() * per_row_scale - weight).abs()
    assert error[3].mean() < per_row_error[3].mean() / 2  # the outlier's row: groups isolate it ...
    assert error[3, 32:].mean() < per_row_error[3, 32:].mean() / 10  # ... its other groups keep a fine grid


# ----------------------------------------------------------------------------- exercise 2: whole-model ratio
def predicted_ratio(quantized_share: float, matrix_ratio: float) -> float:
    """Whole-model size ratio when `quantized_share` of the bytes shrink to `matrix_ratio` and the rest stay."""
    return 1 - quantized_share * (1 - matrix_ratio)


def test_exercise_2_whole_model_ratio():
    vocab, width = 2000, 128
    model = nn.Sequential(nn.Embedding(vocab, width), nn.Linear(width, vocab, bias=False))
    before = compress.state_bytes(model)
    ao = compress.require_torchao()
    ao.quantization.quantize_(model, ao.quantization.Int8WeightOnlyConfig())  # only the nn.Linear
    after = compress.state_bytes(model)
    share = 0.5  # the embedding and the linear hold the same number of fp32 weights
    matrix_ratio = (width * 1 + 4) / (width * 4)  # int8 per weight, plus one fp32 scale per row of `width` inputs
    prediction = predicted_ratio(share, matrix_ratio)
    assert abs(after / before - prediction) < 0.02  # torch.save adds a little metadata to both
    assert predicted_ratio(1.0, 0.25) == 0.25 and predicted_ratio(0.0, 0.25) == 1.0


# ----------------------------------------------------------------------------- exercise 3: real int4 bytes
def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Two int4 codes (-8..7) per uint8: the even-indexed one in the low nibble. The last dimension must be even."""
    nibbles = (codes.to(torch.int16) & 0xF).to(torch.uint8)
    return nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    low, high = (packed & 0xF).to(torch.int8), (packed >> 4).to(torch.int8)
    low, high = torch.where(low > 7, low - 16, low), torch.where(high > 7, high - 16, high)  # sign-extend
    return torch.stack([low, high], dim=-1).flatten(-2)


def test_exercise_3_pack_int4():
    codes = torch.randint(-8, 8, (64, 256), generator=torch.Generator().manual_seed(0), dtype=torch.int8)
    packed = pack_int4(codes)
    assert torch.equal(unpack_int4(packed), codes)  # exact round trip
    assert packed.numel() * packed.element_size() * 2 == codes.numel() * codes.element_size()  # half the bytes
    # independent check: every (low, high) pair of codes gives its own byte value 16·(high mod 16) + (low mod 16)
    assert int(pack_int4(torch.tensor([-8, 7], dtype=torch.int8))) == 16 * 7 + 8
    assert int(pack_int4(torch.tensor([-1, -1], dtype=torch.int8))) == 255
