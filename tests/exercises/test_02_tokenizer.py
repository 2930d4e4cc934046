"""Solutions to the exercises of notebooks/02 (the corpus and the tokenizer), each checked against an independent
result."""

import collections
import itertools
import json

import datasets
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from cookbook.data import tokenizer

WORDS = {"lower": 7, "lowest": 4, "newer": 6, "wider": 3, "hug": 9, "pug": 2, "hugs": 5}  # no tie in 5 merges


# Exercise 1: BPE merges by hand
def pair_counts(words: dict[tuple[str, ...], int]) -> collections.Counter:
    counts = collections.Counter()
    for symbols, freq in words.items():
        for pair in itertools.pairwise(symbols):
            counts[pair] += freq
    return counts


def bpe_merges(word_counts: dict[str, int], n: int) -> list[tuple[str, str]]:
    """Merge the most frequent adjacent pair of symbols, `n` times; each word starts as its characters."""
    words = {tuple(w): f for w, f in word_counts.items()}
    merges = []
    for _ in range(n):
        counts = pair_counts(words)
        (a, b), top = counts.most_common(1)[0]
        assert sum(c == top for c in counts.values()) == 1, "a tie: the order of merges would be a convention"
        merges.append((a, b))
        merged = {}
        for symbols, freq in words.items():
            out, i = [], 0
            while i < len(symbols):
                if symbols[i:i + 2] == (a, b):
                    out.append(a + b)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] = freq
        words = merged
    return merges


def test_first_merges_by_hand():
    assert bpe_merges(WORDS, 3) == [("w", "e"), ("u", "g"), ("h", "ug")]  # 17, 16 and 14 occurrences


def test_merges_equal_the_tokenizers_trainer():
    n = 5
    alphabet = sorted({c for w in WORDS for c in w})
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([" ".join([w] * f) for w, f in WORDS.items()],
                            trainers.BpeTrainer(vocab_size=len(alphabet) + n, show_progress=False))
    merges = json.loads(tok.to_str())["model"]["merges"]
    theirs = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
    assert bpe_merges(WORDS, n) == theirs


# Exercise 2: pack documents into blocks
def pack(documents: list[list[int]], eos: int, block: int) -> list[list[int]]:
    """Append EOS to every document, concatenate, cut into full blocks; the tail that fills no block is dropped."""
    stream = [t for doc in documents for t in [*doc, eos]]
    return [stream[i:i + block] for i in range(0, len(stream) - block + 1, block)]


@pytest.fixture(scope="module")
def small_tokenizer():
    texts = [f"def f{i}(x):\n    return x * {i} + {i * i}\n" for i in range(60)]
    return tokenizer.train(texts, vocab_size=300), texts


@pytest.mark.parametrize("block", [8, 16, 37])
def test_pack_equals_the_cookbook_pack(small_tokenizer, block):
    tok, texts = small_tokenizer
    docs = tok(texts, add_special_tokens=False)["input_ids"]
    mine = pack(docs, tok.eos_token_id, block)
    theirs = tokenizer.pack(datasets.Dataset.from_dict({"text": texts}), tok, block)["input_ids"]
    assert mine == theirs
    total = sum(len(d) + 1 for d in docs)
    assert len(mine) == total // block and all(len(b) == block for b in mine)
    assert sum(b.count(tok.eos_token_id) for b in mine) >= len(texts) - block  # at most one block's tail lost


# Exercise 3: byte-level BPE never meets an unknown character
@pytest.mark.parametrize("text", ["naïve café — 東京 🚀", "\x00\x7f tabs\tand\r\nnewlines", "déjà vu " * 3])
def test_unseen_characters_round_trip_in_at_most_one_token_per_byte(small_tokenizer, text):
    tok, _ = small_tokenizer
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert len(ids) <= len(text.encode("utf-8"))  # the 256 byte tokens are the worst case
    assert tok.unk_token_id is None
