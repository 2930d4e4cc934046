"""Text and classification metrics against their reference libraries: English, Chinese, Japanese, Korean, code."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn import metrics as skm

from cookbook.evaluate import metrics

sacrebleu = pytest.importorskip("sacrebleu")  # the `evaluate` extra
rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")

ENGLISH = (["The cats were running quickly.\nThey jumped over the fences", "a b c d e"],
           ["The cat runs quickly over the fence.\nIt jumped", "a c e f"])
CODE = (["def add(a, b):\n    return a + b\n", "for i in range(10):\n    total += i"],
        ["def add(x, y):\n    return x + y\n", "for item in items:\n    total += item"])
CHINESE = (["我喜欢吃苹果", "今天天气很好\n我们去公园"], ["我喜欢吃香蕉", "今天的天气很好\n我们去了公园"])


class _PerCharacter:
    """An independent per-character tokenizer for the reference scorer: every non-space, non-punctuation char."""

    def tokenize(self, text):
        return [c for c in text.lower() if c.isalnum()]


def _reference_rouge(hyps, refs, **kw):
    scorer = rouge_scorer.RougeScorer(list(metrics.ROUGE_TYPES), **kw)
    scores = [scorer.score(r, h) for h, r in zip(hyps, refs, strict=True)]
    return {t: float(np.mean([s[t].fmeasure for s in scores])) for t in metrics.ROUGE_TYPES}


@pytest.mark.parametrize("stemmer", [False, True])
@pytest.mark.parametrize("texts", [ENGLISH, CODE], ids=["english", "code"])
def test_rouge_equals_rouge_score_on_ascii_text(texts, stemmer):
    got = metrics.rouge(*texts, stemmer=stemmer)
    assert got == pytest.approx(_reference_rouge(*texts, use_stemmer=stemmer), abs=1e-12)
    assert 0 < got["rouge2"] < got["rouge1"] < 1


def test_the_stemmer_matters_where_it_should():
    hyps, refs = ["the cats were running"], ["the cat was runs"]
    assert metrics.rouge(hyps, refs, stemmer=True)["rouge1"] > metrics.rouge(hyps, refs)["rouge1"]


def test_rouge_scores_chinese_per_character():
    got = metrics.rouge(*CHINESE)
    assert got == pytest.approx(_reference_rouge(*CHINESE, tokenizer=_PerCharacter()), abs=1e-12)
    # by hand: 我喜欢吃苹果 vs 我喜欢吃香蕉 share 4 of 6 characters, in order
    assert metrics.rouge([CHINESE[0][0]], [CHINESE[1][0]])["rouge1"] == pytest.approx(4 / 6)
    assert metrics.rouge([CHINESE[0][0]], [CHINESE[1][0]])["rouge2"] == pytest.approx(3 / 5)
    assert _reference_rouge(*CHINESE)["rougeL"] == 0.0  # what rouge-score's own tokenizer makes of Chinese


def test_rouge_scores_japanese_korean_and_mixed_text():
    # Japanese kana and kanji, Korean Hangul syllables: one token each; English words in between stay words
    hyps, refs = ["東京に行きました", "저는 학생입니다", "用 PyTorch 训练模型"], ["東京へ行きます", "저는 선생입니다", "用 PyTorch 训练大模型"]
    assert metrics.rouge([hyps[0]], [refs[0]])["rouge1"] == pytest.approx(2 * 5 / (8 + 7))  # 東京行きま
    assert metrics.rouge([hyps[1]], [refs[1]])["rouge1"] == pytest.approx(6 / 7)  # 7 syllables each, 6 shared
    assert metrics.rouge([hyps[2]], [refs[2]])["rouge1"] == pytest.approx(2 * 1 * (6 / 7) / (1 + 6 / 7))


def test_rouge_edge_cases_and_several_references():
    assert metrics.rouge([""], ["a reference"]) == {t: 0.0 for t in metrics.ROUGE_TYPES}  # empty hypothesis
    with pytest.raises(ValueError, match="example 1: a reference has no word or character"):
        metrics.rouge(["a", "b"], ["a", "?!"])
    # an example takes its best reference, as rouge-score's score_multi
    assert metrics.rouge(["a b c"], [["x y z", "a b c"]])["rougeL"] == 1.0
    assert metrics.rouge_l(["a c e f"], ["a b c d e"]) == pytest.approx(2 * (3 / 4) * (3 / 5) / (3 / 4 + 3 / 5))


def test_bleu_and_chrf_with_several_references_equal_sacrebleu():
    hyps = ["the cat is on the mat", "there is a dog in the garden", "我喜欢吃苹果"]
    refs = [["the cat sits on the mat", "there is a cat on the mat"], ["a dog is in the garden"],
            ["我喜欢吃香蕉", "我爱吃苹果"]]
    streams = [[r[0] for r in refs], [refs[0][1], None, refs[2][1]]]  # sacrebleu's shape, None: no 2nd reference
    assert metrics.bleu(hyps, refs) == pytest.approx(sacrebleu.corpus_bleu(hyps, streams).score, abs=1e-9)
    assert metrics.bleu(hyps, refs, tokenize="zh") == pytest.approx(
        sacrebleu.corpus_bleu(hyps, streams, tokenize="zh").score, abs=1e-9)
    for word_order in (0, 2):
        assert metrics.chrf(hyps, refs, word_order=word_order) == pytest.approx(
            sacrebleu.corpus_chrf(hyps, streams, word_order=word_order).score, abs=1e-9)
    # a second reference can only help: more n-grams to match
    assert metrics.bleu(hyps[:1], [refs[0]]) > metrics.bleu(hyps[:1], [refs[0][:1]])
    assert metrics.chrf(*CODE, word_order=2) != metrics.chrf(*CODE)


def test_bleu_matches_a_hand_computation():
    hyp, ref = "the cat sat on the mat today", "the cat sat on the mat"
    # clipped n-gram precisions: 6/7, 5/6, 4/5, 3/4; the hypothesis is longer, so no brevity penalty
    assert metrics.bleu([hyp], [ref]) == pytest.approx(100 * math.exp(np.mean(np.log([6 / 7, 5 / 6, 4 / 5, 3 / 4]))),
                                                       abs=1e-9)
    assert metrics.bleu(["the cat sat on the"], [ref]) == pytest.approx(100 * math.exp(1 - 6 / 5), abs=1e-9)
    assert metrics.bleu([""], [ref]) == 0.0  # empty hypothesis


def test_exact_match():
    assert metrics.exact_match([" 42\n", "x", "b"], ["42", "y", ["a", "b"]]) == pytest.approx(2 / 3)
    assert metrics.exact_match([" 42"], ["42"], strip=False) == 0.0
    assert metrics.exact_match(["北京"], ["北京"]) == 1.0


def test_text_metrics_bad_input():
    with pytest.raises(ValueError, match="2 hypotheses and 1 references"):
        metrics.bleu(["a", "b"], ["a"])
    with pytest.raises(TypeError, match="lists of strings"):
        metrics.rouge_l("a", "a")
    with pytest.raises(TypeError, match="example 0: .* non-empty list of strings, got 'a' and \\[\\]"):
        metrics.chrf(["a"], [[]])
    assert metrics.text_scores(["return a + b"], ["return a + b"]) == pytest.approx(
        {"bleu": 100.0, "chrf": 100.0, "rouge_l": 1.0})


def test_f1_scores_equal_scikit_learn():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 4, 300), rng.integers(0, 4, 300)
    y_pred[:150] = y_true[:150]
    got = metrics.f1_scores(y_true, y_pred, pos_label=2)
    for average in ("micro", "macro", "weighted"):
        assert got[average] == pytest.approx(skm.f1_score(y_true, y_pred, average=average), abs=1e-12)
    assert got["micro"] == pytest.approx(skm.accuracy_score(y_true, y_pred), abs=1e-12)
    assert got["binary"] == pytest.approx(skm.f1_score(y_true == 2, y_pred == 2), abs=1e-12)
    table = got["per_class"]
    assert list(table.index) == [0, 1, 2, 3]
    assert np.allclose(table["precision"], skm.precision_score(y_true, y_pred, average=None), atol=1e-12)
    assert np.allclose(table["recall"], skm.recall_score(y_true, y_pred, average=None), atol=1e-12)
    assert table["support"].tolist() == np.bincount(y_true).tolist()


def test_f1_scores_edge_cases():
    # a class never predicted: precision 0 (not NaN), recall 0
    got = metrics.f1_scores(["cat", "dog", "dog"], ["dog", "dog", "dog"])
    assert got["per_class"].loc["cat"].tolist() == [0.0, 0.0, 0.0, 1]
    assert got["macro"] == pytest.approx((0 + 0.8) / 2)
    with pytest.raises(ValueError, match="no true example has pos_label=1, so recall is undefined"):
        metrics.f1_scores([0, 0, 0], [0, 1, 0], pos_label=1)
    with pytest.raises(ValueError, match=r"shapes \(2,\) and \(3,\)"):
        metrics.f1_scores([0, 1], [0, 1, 1])


def test_perplexity_from_nll_equals_exp_of_torch_cross_entropy():
    torch.manual_seed(0)
    logits, targets = torch.randn(37, 11, dtype=torch.float64), torch.randint(0, 11, (37,))
    total = F.cross_entropy(logits, targets, reduction="sum").item()
    got = metrics.perplexity_from_nll(total, 37)
    assert got["ppl"] == pytest.approx(math.exp(F.cross_entropy(logits, targets).item()), rel=1e-12)
    assert got["loss"] == pytest.approx(total / 37, rel=1e-12) and got["tokens"] == 37
    assert metrics.perplexity_from_nll(0.0, 5)["ppl"] == 1.0
    for bad, match in [((1.0, 0), "at least one token, got tokens=0"), ((1.0, 2.5), "tokens=2.5"),
                       ((-1.0, 3), "finite sum"), ((math.nan, 3), "finite sum")]:
        with pytest.raises(ValueError, match=match):
            metrics.perplexity_from_nll(*bad)


def test_rouge_stems_like_rouge_score_words_over_three_letters_only():
    # Porter would cut "was" to "wa" and "his" to "hi"; rouge-score stems only words of more than 3 letters, so
    # only "dogs"/"dog" match here
    hyps, refs = ["was his dogs"], ["wa hi dog"]
    got = metrics.rouge(hyps, refs, stemmer=True)
    assert got == pytest.approx(_reference_rouge(hyps, refs, use_stemmer=True), abs=1e-12)
    assert got["rouge1"] == pytest.approx(1 / 3) and got["rougeL"] == pytest.approx(1 / 3)
    # non-ASCII words are kept as written (Porter would make "cafés" "café", matching the reference)
    assert metrics.rouge_l(["cafés"], ["café"], stemmer=True) == 0.0


def test_rouge_l_without_the_stemmer_by_default():
    hyps, refs = ["the cats were running"], ["the cat was runs"]
    assert metrics.rouge_l(hyps, refs) == pytest.approx(_reference_rouge(hyps, refs)["rougeL"], abs=1e-12)
    assert metrics.rouge_l(hyps, refs, stemmer=True) == pytest.approx(
        _reference_rouge(hyps, refs, use_stemmer=True)["rougeL"], abs=1e-12)
    assert metrics.rouge_l(hyps, refs, stemmer=True) > metrics.rouge_l(hyps, refs)


def test_chrf_defaults_to_sacrebleu_s_chrf_not_chrf_plus_plus():
    hyps, refs = ENGLISH
    assert metrics.chrf(hyps, refs) == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score, abs=1e-9)
    assert metrics.chrf(hyps, refs) != pytest.approx(metrics.chrf(hyps, refs, word_order=1), abs=1e-6)


@pytest.mark.parametrize("hyps, refs", [("abc", ["abc"]), (["abc"], "abc")])
def test_one_string_instead_of_a_list_is_refused_either_side(hyps, refs):
    with pytest.raises(TypeError, match=r"^pass lists of strings \(one hypothesis and one reference per example\), "
                                        r"not one string$"):
        metrics.bleu(hyps, refs)
