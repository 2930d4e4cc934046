import dataclasses
import hashlib

import pytest
from datasets import Dataset

from cookbook import profiles
from cookbook.data import corpus, sources, tokenizer

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


def test_pack_drops_one_tail_per_batch_of_1000_documents_whatever_the_processes(tok):
    texts = [DOCS[i % 3] * (1 + i % 5) for i in range(2300)]
    ds = Dataset.from_dict({"text": texts})
    expected = []
    for start in range(0, len(texts), 1000):  # by hand: each batch's stream, cut into full blocks
        batch = stream(tok, texts[start : start + 1000])
        expected += [batch[i : i + 64] for i in range(0, len(batch) // 64 * 64, 64)]
    assert list(tokenizer.pack(ds, tok, 64)["input_ids"]) == expected
    assert list(tokenizer.pack(ds, tok, 64, num_proc=2)["input_ids"]) == expected


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


def test_pack_names_the_sizes_when_the_text_fills_no_block(tok):
    ds = Dataset.from_dict({"text": ["x = 1\n"]})
    n_tokens = len(tok("x = 1\n", add_special_tokens=False)["input_ids"]) + 1  # + the EOS separator
    with pytest.raises(ValueError, match=rf"1 document\(s\) of {n_tokens} tokens .* no block of 64 tokens"):
        tokenizer.pack(ds, tok, 64)
    assert len(tokenizer.pack(ds, tok, n_tokens)) == 1  # exactly one block's worth is enough


def package_docs(n: int = 60) -> Dataset:
    rows = [(f"pkg{i % 30}/mod{i}.py", f"pkg{i % 30}", DOCS[i % 3].replace("a", "abcdefg"[i % 7]) * (1 + i % 4))
            for i in range(n)]
    return Dataset.from_dict({"path": [r[0] for r in rows], "package": [r[1] for r in rows],
                              "text": [r[2] for r in rows], "bytes": [len(r[2].encode()) for r in rows]})


def by_hash(part) -> list[str]:
    return [text for _, text in sorted(zip([hashlib.sha1(p.encode()).digest() for p in part["path"]], part["text"],
                                           strict=True))]


def stream(tok, texts):
    return [t for text in texts for t in (*tok(text, add_special_tokens=False)["input_ids"], tok.eos_token_id)]


def capped_profile(seq_len=16, cap=160):
    smoke = profiles.PROFILES["smoke"]
    return dataclasses.replace(smoke, data=dataclasses.replace(
        smoke.data, vocab_size=300, tokenizer_fraction=1.0, data_fraction=1.0, seq_len=seq_len,
        corpus="environment", max_train_tokens=cap))


def test_capped_blocks_sample_documents_in_hash_order_and_stop_at_the_cap(tok, monkeypatch, tmp_path):
    ds, P = package_docs(), capped_profile()
    blocks = tokenizer.blocks_for_profile(P, tok, ds)
    parts = sources.split(ds)
    # By hand: documents ordered by the SHA-1 of their path, joined with EOS, the first 160 tokens.
    train = stream(tok, by_hash(parts["train"]))
    assert len(blocks["train"]) == 160 // 16
    assert [t for b in blocks["train"]["input_ids"] for t in b] == train[:160]
    val = stream(tok, by_hash(parts["validation"]))
    assert [t for b in blocks["validation"]["input_ids"] for t in b] == val[: len(val) // 16 * 16]
    # Batches of 7 documents and a first guess of the bytes per token far too low: many small passes, and
    # still exactly the blocks of one pass (pieces start at batch boundaries).
    monkeypatch.setenv("COOKBOOK_CACHE", str(tmp_path))
    monkeypatch.setattr(tokenizer, "_BATCH", 7)
    one_pass = tokenizer.blocks_for_profile(P, tok, ds)
    monkeypatch.setattr(tokenizer, "_BYTES_PER_TOKEN", 0.05)
    monkeypatch.setenv("COOKBOOK_CACHE", str(tmp_path / "again"))
    passes = tokenizer.blocks_for_profile(P, tok, ds)
    assert passes["train"]["input_ids"] == one_pass["train"]["input_ids"] and len(passes["train"]) == 10
    monkeypatch.setattr(tokenizer, "_BATCH", 1000)
    # A cap beyond the corpus gives every block, never more.
    everything = tokenizer.blocks_for_profile(capped_profile(cap=10**9), tok, ds)
    assert len(everything["train"]) == len(train) // 16


def test_blocks_are_cached_by_texts_tokenizer_and_sizes(tok, tmp_path, monkeypatch):
    monkeypatch.setenv("COOKBOOK_CACHE", str(tmp_path))
    ds, P = package_docs(), capped_profile()
    first = tokenizer.blocks_for_profile(P, tok, ds)
    with monkeypatch.context() as m:
        m.setattr(tokenizer, "pack", lambda *a, **k: (_ for _ in ()).throw(AssertionError("packed again")))
        again = tokenizer.blocks_for_profile(P, tok, ds)
    assert again["train"]["input_ids"] == first["train"]["input_ids"]
    assert len(list(tmp_path.glob("blocks-16-*"))) == 1
    tokenizer.blocks_for_profile(capped_profile(cap=96), tok, ds)  # other sizes: other blocks
    tokenizer.blocks_for_profile(P, tok, ds.select(range(50)))  # other texts: other blocks
    assert len(list(tmp_path.glob("blocks-16-*"))) == 3


def test_for_profile_trains_on_the_profiles_corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("COOKBOOK_CACHE", str(tmp_path))
    ds = package_docs()
    monkeypatch.setattr(sources, "environment", lambda **kwargs: ds)
    P = capped_profile()
    tok = tokenizer.for_profile(P)  # no corpus given: the profile's, here the (stubbed) environment corpus
    by_hand = tokenizer.train(sources.split(ds)["train"]["text"], vocab_size=300)
    assert tok.get_vocab() == by_hand.get_vocab()
    assert len(tokenizer.blocks_for_profile(P, tok)["train"]) == 10
