import hashlib
import json
import sysconfig
import warnings
from pathlib import Path

import pandas as pd
import pytest
from datasets import Dataset

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


def _corpus(paths):
    return Dataset.from_dict({"path": paths, "text": [f"text of {p}" for p in paths],
                              "bytes": [9 + len(p) for p in paths], "lines": [1] * len(paths)})


def _by_hash(paths, validation, fraction):
    """The hash rule written out: SHA-1 of the path, first 8 bytes, as a fraction of 2**64."""
    share = {p: int(hashlib.sha1(p.encode()).hexdigest()[:16], 16) / 2**64 for p in paths}
    val = [p for p in paths if share[p] < validation * fraction]
    train = [p for p in paths if validation <= share[p] < validation + (1 - validation) * fraction]
    return train, val, share


@pytest.mark.parametrize("validation, fraction", [(0.05, 1.0), (0.05, 0.05), (0.1, 0.3), (0.5, 0.01), (0.9, 1.0)])
def test_split_of_a_small_corpus_never_leaves_a_side_empty(validation, fraction):
    for n in range(2, 40):
        paths = [f"doc-{k:02d}.txt" for k in range(n)]
        train, val, share = _by_hash(paths, validation, fraction)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            parts = corpus.split(_corpus(paths), validation=validation, fraction=fraction)
            again = corpus.split(_corpus(paths), validation=validation, fraction=fraction)
        got_train, got_val = list(parts["train"]["path"]), list(parts["validation"]["path"])
        assert got_train and got_val and not set(got_train) & set(got_val), (n, got_train, got_val)
        if train and val:  # the hash rule alone: nothing moved, nothing said
            assert (got_train, got_val) == (train, val) and not caught
            continue
        assert len(caught) == 2 and "left a side empty" in str(caught[0].message)
        if not val:  # the lowest hash joins validation
            assert got_val == [min(paths, key=share.get)]
        assert ("larger fraction" in str(caught[0].message)) == (fraction < 1)
        assert list(again["validation"]["path"]) == got_val  # deterministic


def test_split_like_python_313_keeps_a_validation_document():
    # 3.13's smaller stdlib had no path hash below 0.05 x 0.05, so fraction=0.05 gave an empty validation side
    paths = [f"doc-{k:03d}.py" for k in range(400)]
    _, _, share = _by_hash(paths, 0.05, 0.05)
    paths = [p for p in paths if share[p] >= 0.0025]  # the same situation, by construction
    with pytest.warns(UserWarning, match=r"validation takes 'doc-\d+\.py'.*larger fraction"):
        parts = corpus.split(_corpus(paths), validation=0.05, fraction=0.05)
    assert list(parts["validation"]["path"]) == [min(paths, key=share.get)]
    assert list(parts["train"]["path"]) == _by_hash(paths, 0.05, 0.05)[0]


def test_split_of_one_document_is_an_error_that_does_not_blame_the_fraction(stdlib):
    with pytest.raises(ValueError, match=r"cannot split 1 document\(s\) into train and validation: it takes "
                                         r"at least 2$"):
        corpus.split(stdlib.select(range(1)), fraction=1.0)
    with pytest.warns(UserWarning, match="left a side empty"):
        parts = corpus.split(stdlib.select(range(2)), validation=0.01)
    assert len(parts["train"]) == len(parts["validation"]) == 1


def test_user_text_folder_loads_every_text_suffix_and_reports_every_skip(tmp_path):
    (tmp_path / "a.txt").write_text("hello\nworld\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("second doc")
    (tmp_path / "NOTES.TXT").write_text("upper-case suffix")
    (tmp_path / "guide.md").write_text("# Guide")
    (tmp_path / "api.rst").write_text("API\n===\n")
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9 latin-1")
    (tmp_path / "logo.png").write_bytes(b"\x89PNG")
    (tmp_path / "Makefile").write_text("all:")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref: main")
    expected_skips = [(".git/HEAD", "hidden (.git, .ipynb_checkpoints, …)"),
                      ("Makefile", "suffix (none) is not a corpus format"),
                      ("bad.txt", "not UTF-8 (byte 0xe9 at offset 3)"),
                      ("logo.png", "suffix .png is not a corpus format")]
    with pytest.warns(UserWarning, match=r"skipped 4 file\(s\)") as caught:
        ds = corpus.load(tmp_path)
    message = str(caught[0].message)
    for path, reason in expected_skips:
        assert path in message and reason.split(" (byte")[0] in message
    assert "corpus.skipped(" in message and ".md" in message  # where the full list is, and what loads
    assert list(ds["path"]) == ["NOTES.TXT", "a.txt", "api.rst", "guide.md", "sub/b.txt"]
    assert list(ds["lines"]) == [1, 2, 2, 1, 1] and list(ds["bytes"]) == [17, 12, 8, 7, 10]
    assert corpus.skipped(tmp_path) == expected_skips


@pytest.mark.parametrize("suffix", [*corpus.TEXT_SUFFIXES, *(s.upper() for s in corpus.TEXT_SUFFIXES)])
def test_every_text_suffix_loads_in_any_case(tmp_path, suffix):
    (tmp_path / f"doc{suffix}").write_text("some text")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing skipped, nothing to say
        assert list(corpus.load(tmp_path)["path"]) == [f"doc{suffix}"]
    assert list(corpus.load(tmp_path / f"doc{suffix}")["text"]) == ["some text"]


def test_a_file_named_explicitly_with_an_unknown_suffix_is_refused(tmp_path):
    (tmp_path / "data.csv").write_text("text\nhello\n")
    with pytest.raises(ValueError, match=r"no corpus files found .*suffix \.csv is not a corpus format.*\.md"):
        corpus.load(tmp_path / "data.csv")


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
    with pytest.raises(ValueError, match="no corpus files found"):
        corpus.load(tmp_path)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="has no text"):
        corpus.load(tmp_path)
    (tmp_path / "d.jsonl").write_text(json.dumps({"text": "x"}))
    with pytest.raises(ValueError, match="mix of"):
        corpus.load(tmp_path)
