import json
import sysconfig
from pathlib import Path

import pandas as pd
import pytest

from cookbook.data import corpus


@pytest.fixture(scope="module")
def stdlib():
    return corpus.load()


def test_stdlib_corpus_is_the_real_stdlib(stdlib):
    root = Path(sysconfig.get_paths()["stdlib"])
    assert set(stdlib.column_names) == {"path", "text", "bytes", "lines"}
    paths = list(stdlib["path"])
    assert "os.py" in paths and "json/decoder.py" in paths
    row = stdlib[paths.index("os.py")]
    raw = (root / "os.py").read_bytes()
    assert row["text"] == raw.decode() and row["bytes"] == len(raw) and row["lines"] == raw.count(b"\n")
    assert 5e6 < sum(stdlib["bytes"]) < 30e6  # ≈12 MB of code without the test suites


def test_tests_are_excluded_unless_asked(stdlib):
    assert not any(p.startswith("test/") or "/tests/" in p or "idle_test" in p for p in stdlib["path"])
    _, with_tests = corpus.stdlib_files(include_tests=True)
    assert len(with_tests) > len(stdlib)
    assert not any("site-packages" in p.parts for p in with_tests)


def test_fingerprint_is_stable_and_sensitive(stdlib):
    assert corpus.fingerprint(stdlib) == corpus.fingerprint(corpus.load())
    assert corpus.fingerprint(stdlib.select(range(10))) != corpus.fingerprint(stdlib.select(range(11)))


def test_split_is_deterministic_disjoint_and_stable(stdlib):
    parts = corpus.split(stdlib, validation=0.1)
    train, val = set(parts["train"]["path"]), set(parts["validation"]["path"])
    assert not train & val and len(train) + len(val) == len(stdlib)
    assert 0.05 < len(val) / len(stdlib) < 0.15
    assert corpus.split(stdlib, validation=0.1)["validation"]["path"] == parts["validation"]["path"]
    # A document's side does not depend on what else is in the corpus.
    small = corpus.split(stdlib.select(range(0, len(stdlib), 2)), validation=0.1)
    assert set(small["validation"]["path"]) <= val and set(small["train"]["path"]) <= train


def test_fraction_keeps_a_subset_of_both_sides(stdlib):
    full = corpus.split(stdlib, validation=0.1)
    part = corpus.split(stdlib, validation=0.1, fraction=0.25)
    assert set(part["train"]["path"]) < set(full["train"]["path"])
    assert set(part["validation"]["path"]) <= set(full["validation"]["path"])
    assert 0.15 < len(part["train"]) / len(full["train"]) < 0.35


@pytest.mark.parametrize("kwargs", [dict(validation=0), dict(validation=1.2), dict(fraction=0), dict(fraction=2)])
def test_split_rejects_bad_shares(stdlib, kwargs):
    with pytest.raises(ValueError):
        corpus.split(stdlib, **kwargs)


def test_split_of_too_few_documents_is_an_error(stdlib):
    with pytest.raises(ValueError, match="empty side"):
        corpus.split(stdlib.select(range(2)), validation=0.01)


def test_user_text_folder_counts_non_utf8_skips(tmp_path):
    (tmp_path / "a.txt").write_text("hello\nworld\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("second doc")
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9 latin-1")
    (tmp_path / "notes.md").write_text("ignored: not a corpus format")
    with pytest.warns(UserWarning, match=r"skipped 1 non-UTF-8 file\(s\): bad.txt"):
        ds = corpus.load(tmp_path)
    assert list(ds["path"]) == ["a.txt", "sub/b.txt"]
    assert list(ds["lines"]) == [2, 1] and list(ds["bytes"]) == [12, 10]


def test_user_jsonl_and_parquet(tmp_path):
    rows = [{"content": "def f():\n    return 1\n"}, {"content": "x = 2"}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    ds = corpus.load(tmp_path / "d.jsonl", text_column="content")
    assert list(ds["text"]) == [r["content"] for r in rows] and list(ds["lines"]) == [3, 1]
    pq = tmp_path / "pq"
    pq.mkdir()
    pd.DataFrame({"text": ["a b", "c"]}).to_parquet(pq / "part.parquet")
    assert list(corpus.load(pq)["text"]) == ["a b", "c"]


def test_missing_text_column_names_the_columns(tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps({"body": "x"}))
    with pytest.raises(ValueError, match=r"no column 'text'.*\['body'\]"):
        corpus.load(tmp_path / "d.jsonl")


def test_missing_empty_and_mixed_corpora_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        corpus.load(tmp_path / "nope")
    with pytest.raises(ValueError, match="no .txt"):
        corpus.load(tmp_path)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="has no text"):
        corpus.load(tmp_path)
    (tmp_path / "d.jsonl").write_text(json.dumps({"text": "x"}))
    with pytest.raises(ValueError, match="mix of"):
        corpus.load(tmp_path)
