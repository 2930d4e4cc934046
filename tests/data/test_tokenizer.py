import dataclasses

import pytest
from datasets import Dataset

from cookbook import profiles
from cookbook.data import corpus, tokenizer

DOCS = ["def add(a, b):\n    return a + b\n", "class Point:\n    x = 0\n    y = 0\n", "print('héllo, wörld ✓')\n"] * 20


@pytest.fixture(scope="module")
def tok():
    return tokenizer.train(DOCS, vocab_size=300)


def test_bpe_round_trips_any_text_without_unknowns(tok):
    text = "λ = lambda x: x ** 2  # ünïcödé, emoji 🚀, tabs\t\tand\r\nCRLF"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.unk_token_id is None  # byte-level: every byte is in the vocabulary


def test_vocab_size_and_specials(tok):
    assert len(tok) == 300
    assert tok.eos_token == tokenizer.EOS and tok.pad_token == tokenizer.PAD
    assert tok.convert_tokens_to_ids([tokenizer.EOS, tokenizer.PAD]) == [0, 1]


def test_bpe_merges_frequent_code(tok):
    # Frequent words become single tokens, so code costs fewer tokens than bytes.
    ids = tok("    return a + b\n", add_special_tokens=False)["input_ids"]
    assert len(ids) < len(b"    return a + b\n") / 2


def test_training_is_deterministic():
    a = tokenizer.train(DOCS, vocab_size=300)
    b = tokenizer.train(DOCS, vocab_size=300)
    assert a.get_vocab() == b.get_vocab()


def test_save_load_round_trip(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    again = tokenizer.load(tmp_path)
    assert again("x = 1")["input_ids"] == tok("x = 1")["input_ids"]
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        tokenizer.load(tmp_path / "missing")


def test_bad_vocab_and_empty_training_data():
    with pytest.raises(ValueError, match="vocab_size"):
        tokenizer.train(DOCS, vocab_size=100)
    with pytest.raises(ValueError, match="no text"):
        tokenizer.train([], vocab_size=300)


def test_pack_makes_full_blocks_with_eos_separators(tok):
    ds = Dataset.from_dict({"text": DOCS[:3], "path": ["a", "b", "c"]})
    block = 8
    packed = tokenizer.pack(ds, tok, block)
    stream = [t for d in DOCS[:3] for t in (*tok(d, add_special_tokens=False)["input_ids"], tok.eos_token_id)]
    assert packed.column_names == ["input_ids"]
    blocks = list(packed["input_ids"])
    assert all(len(b) == block for b in blocks)
    assert [t for b in blocks for t in b] == stream[: len(stream) // block * block]  # order kept, only the tail dropped
    assert tokenizer.pack(ds, tok, block)["input_ids"] == packed["input_ids"]


def test_pack_rejects_bad_input(tok):
    ds = Dataset.from_dict({"text": ["x"]})
    with pytest.raises(ValueError, match="block_size"):
        tokenizer.pack(ds, tok, 1)


def test_trained_caches_by_content(tmp_path):
    ds = Dataset.from_dict({"text": DOCS})
    first = tokenizer.trained(ds, 300, cache=tmp_path)
    assert len(list(tmp_path.glob("tokenizer-300-*"))) == 1
    again = tokenizer.trained(ds, 300, cache=tmp_path)
    assert again.get_vocab() == first.get_vocab()
    tokenizer.trained(Dataset.from_dict({"text": DOCS[:30]}), 300, cache=tmp_path)
    assert len(list(tmp_path.glob("tokenizer-300-*"))) == 2  # different texts, different tokenizer


def test_stdlib_tokenizer_compresses_code():
    parts = corpus.split(corpus.load(), validation=0.05, fraction=0.05)
    tok = tokenizer.train(parts["train"]["text"], vocab_size=1024)
    val = list(parts["validation"]["text"])
    n_tokens = sum(len(ids) for ids in tok(val, add_special_tokens=False)["input_ids"])
    n_bytes = sum(len(t.encode()) for t in val)
    assert n_tokens / n_bytes < 0.5  # a byte tokenizer needs exactly 1 token per byte


def test_profile_tokenizer_and_blocks_are_shared_and_sized_by_the_profile(tmp_path, monkeypatch):
    monkeypatch.setenv("COOKBOOK_CACHE", str(tmp_path))
    smoke = profiles.PROFILES["smoke"]
    P = dataclasses.replace(smoke, data=dataclasses.replace(smoke.data, vocab_size=300, tokenizer_fraction=0.05,
                                                            data_fraction=0.05, seq_len=16))
    ds = corpus.load()
    tok = tokenizer.for_profile(P, ds)
    # The same recipe spelled out by hand: BPE on the tokenizer fraction of the training split.
    by_hand = tokenizer.train(corpus.split(ds, fraction=0.05)["train"]["text"], vocab_size=300)
    assert tok.get_vocab() == by_hand.get_vocab()
    assert tokenizer.for_profile(P, ds).get_vocab() == tok.get_vocab()  # second call: the cached tokenizer
    assert len(list(tmp_path.glob("tokenizer-300-*"))) == 1
    blocks = tokenizer.blocks_for_profile(P, tok, ds)
    parts = corpus.split(ds, fraction=0.05)
    assert set(blocks) == {"train", "validation"}
    assert list(blocks["train"]["input_ids"]) == list(tokenizer.pack(parts["train"], tok, 16)["input_ids"])
