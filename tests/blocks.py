"""The seeded, learnable token blocks the training-loop tests share: counting mod VOCAB from a random start,
stride 1-3, so a tiny model's loss falls quickly and every run is reproducible."""

import torch

from cookbook import train

VOCAB = 96


def counting_ids(n: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """(n, seq_len) token ids."""
    gen = torch.Generator().manual_seed(seed)
    start = torch.randint(0, VOCAB, (n, 1), generator=gen)
    stride = torch.randint(1, 4, (n, 1), generator=gen)
    return (start + stride * torch.arange(seq_len)) % VOCAB


class Blocks(torch.utils.data.Dataset):
    """`counting_ids` as a map-style dataset of {"input_ids": ...} examples."""

    def __init__(self, n=48, seq_len=24, seed=0):
        self.ids = counting_ids(n, seq_len, seed)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i]}


def loader(n=48, seq_len=24, batch=4, seed=0, shuffle=True):
    return train.loader(Blocks(n, seq_len, seed), batch, shuffle=shuffle, seed=seed)
