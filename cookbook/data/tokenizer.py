"""Byte-level BPE tokenizer training and packing of documents into fixed-length blocks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import datasets
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from cookbook.data import corpus
from cookbook.env import cache_dir

__all__ = ["EOS", "PAD", "blocks_for_profile", "for_profile", "load", "pack", "train", "trained"]

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def train(texts, vocab_size: int = 4096, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (GPT-2 style: no unknown tokens) on an iterable of strings."""
    if vocab_size < 257 + 2:
        raise ValueError(f"vocab_size must exceed the 256 byte tokens + 2 specials, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is a token: nothing is ever unknown
        show_progress=False,
    )
    seen = 0

    def counted():
        nonlocal seen
        for text in texts:
            seen += bool(text)
            yield text

    tok.train_from_iterator(counted(), trainer=trainer)
    if not seen:
        raise ValueError("tokenizer training saw no text")
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, bos_token=EOS)


def load(folder: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved with `save_pretrained`."""
    folder = Path(folder)
    if not (folder / "tokenizer.json").exists():
        raise FileNotFoundError(f"no tokenizer.json in {folder}")
    return PreTrainedTokenizerFast.from_pretrained(str(folder))


def trained(ds: datasets.Dataset, vocab_size: int, cache: str | Path | None = None) -> PreTrainedTokenizerFast:
    """Train on `ds["text"]` once and reuse it: the result is cached under a key of the texts and vocab size."""
    digest = hashlib.sha256(str(vocab_size).encode())
    for text in ds["text"]:
        digest.update(text.encode("utf-8", "surrogatepass"))
    key = digest.hexdigest()[:12]
    folder = Path(cache or cache_dir()) / f"tokenizer-{vocab_size}-{key}"
    if (folder / "tokenizer.json").exists():
        return load(folder)
    tok = train(ds["text"], vocab_size)
    tmp = folder.with_name(folder.name + ".tmp")
    tok.save_pretrained(str(tmp))
    tmp.replace(folder)  # atomic: a half-written tokenizer is never picked up
    return tok


def pack(ds: datasets.Dataset, tokenizer, block_size: int, num_proc: int | None = None) -> datasets.Dataset:
    """Tokenize documents, join them with EOS separators and cut the stream into `block_size` blocks.

    The tail that does not fill a block is dropped (per map batch of 1000 documents), so every
    block is full and no padding is needed. Deterministic: same input, same blocks.
    """
    if block_size < 2:
        raise ValueError(f"block_size must be >= 2, got {block_size}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token; packing needs a document separator")

    def chunk(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        stream = [t for doc in ids for t in (*doc, eos)]
        n = len(stream) // block_size * block_size
        return {"input_ids": [stream[i : i + block_size] for i in range(0, n, block_size)]}

    return ds.map(
        chunk, batched=True, remove_columns=ds.column_names, num_proc=num_proc, desc=f"packing {block_size}"
    )


def for_profile(profile, ds: datasets.Dataset | None = None) -> PreTrainedTokenizerFast:
    """The profile's tokenizer (cached): `vocab_size` BPE on `tokenizer_fraction` of the corpus's training split.

    Every notebook and `train.pretrained` go through here, so they all share one tokenizer.
    """
    ds = corpus.load() if ds is None else ds
    return trained(corpus.split(ds, fraction=profile.data.tokenizer_fraction)["train"], profile.data.vocab_size)


def blocks_for_profile(profile, tok, ds: datasets.Dataset | None = None) -> datasets.DatasetDict:
    """Train/validation blocks of the profile's `seq_len` from `data_fraction` of the corpus (stdlib by default)."""
    ds = corpus.load() if ds is None else ds
    parts = corpus.split(ds, fraction=profile.data.data_fraction)
    return datasets.DatasetDict({name: pack(part, tok, profile.data.seq_len) for name, part in parts.items()})
