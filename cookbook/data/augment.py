"""Data augmentation: EDA text operations, identifier renaming for code, time-series noise and slicing,
and back-translation through any translate function. Every random choice comes from `seed`.

EDA (Wei & Zou, 2019): synonym replacement, random insertion, random deletion and random swap, each
with a rate = share of the words touched. Synonyms come from a small built-in thesaurus or from
`embedding_thesaurus`, nearest neighbours under a local sentence-transformers model.
"""

from __future__ import annotations

import ast
import builtins
import keyword
import random
import re
import sys
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from cookbook.data.clean.text import STOPWORDS
from cookbook.data.dedup.embeddings import embed

__all__ = [
    "THESAURUS",
    "back_translate",
    "eda",
    "embedding_thesaurus",
    "gaussian_noise",
    "random_delete",
    "random_insert",
    "random_swap",
    "rename_identifiers",
    "sliding_windows",
    "synonym_replace",
    "window_slice",
]

# A small hand-written thesaurus: enough to demonstrate EDA without downloading WordNet.
THESAURUS: dict[str, list[str]] = {
    "big": ["large", "huge", "vast"], "small": ["little", "tiny", "compact"], "fast": ["quick", "rapid", "speedy"],
    "slow": ["sluggish", "unhurried"], "good": ["fine", "great", "solid"], "bad": ["poor", "awful", "weak"],
    "happy": ["glad", "pleased", "cheerful"], "sad": ["unhappy", "gloomy"], "start": ["begin", "launch"],
    "end": ["finish", "stop"], "make": ["build", "create"], "use": ["employ", "apply"], "show": ["display", "reveal"],
    "help": ["assist", "aid"], "get": ["obtain", "fetch"], "buy": ["purchase", "acquire"], "easy": ["simple", "effortless"],
    "hard": ["difficult", "tough"], "smart": ["clever", "bright"], "model": ["network", "system"],
    "train": ["fit", "optimize"], "data": ["dataset", "corpus"], "error": ["mistake", "fault"],
    "result": ["outcome", "finding"], "answer": ["reply", "response"], "question": ["query", "inquiry"],
    "important": ["crucial", "essential", "key"], "quickly": ["rapidly", "swiftly"], "often": ["frequently", "regularly"],
    "improve": ["enhance", "boost"], "reduce": ["lower", "cut", "decrease"], "increase": ["raise", "grow", "boost"],
    "problem": ["issue", "difficulty"], "idea": ["notion", "concept"], "method": ["approach", "technique"],
    "large": ["big", "sizable"], "little": ["small", "slight"], "great": ["excellent", "superb"],
    "delivery": ["shipment", "shipping"], "price": ["cost", "charge"], "quality": ["standard", "grade"],
    "customer": ["client", "buyer"], "service": ["support", "assistance"], "product": ["item", "article"],
}

_WORD = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")


def _words(text: str) -> list[str]:
    if not isinstance(text, str):
        raise TypeError(f"expected str, got {type(text).__name__}")
    return _WORD.findall(text)


def _check_rate(rate: float) -> None:
    if not 0 <= rate <= 1:
        raise ValueError(f"rate must be in [0, 1], got {rate}")


def _match_case(word: str, like: str) -> str:
    return word.capitalize() if like[:1].isupper() and like[1:].islower() else (word.upper() if like.isupper() and len(like) > 1 else word)


def _synonyms(word: str, thesaurus: Mapping[str, Sequence[str]]) -> list[str]:
    return [s for s in thesaurus.get(word.lower(), ()) if s.lower() != word.lower()]


def synonym_replace(text: str, rate: float = 0.1, seed: int = 0,
                    thesaurus: Mapping[str, Sequence[str]] = THESAURUS) -> str:
    """Replace about `rate` of the words (those with a synonym, stopwords never) by a random synonym."""
    _check_rate(rate)
    rng, words = random.Random(seed), _words(text)
    candidates = [i for i, w in enumerate(words) if w.lower() not in STOPWORDS and _synonyms(w, thesaurus)]
    n = min(len(candidates), max(1, round(rate * len(words)))) if rate > 0 else 0
    for i in rng.sample(candidates, n):
        words[i] = _match_case(rng.choice(_synonyms(words[i], thesaurus)), words[i])
    return " ".join(words)


def random_insert(text: str, rate: float = 0.1, seed: int = 0,
                  thesaurus: Mapping[str, Sequence[str]] = THESAURUS) -> str:
    """Insert, about `rate`·len times, a synonym of a random word at a random position."""
    _check_rate(rate)
    rng, words = random.Random(seed), _words(text)
    pool = [s for w in words for s in _synonyms(w, thesaurus)]
    n = max(1, round(rate * len(words))) if rate > 0 and pool else 0
    for _ in range(n):
        words.insert(rng.randint(0, len(words)), rng.choice(pool))
    return " ".join(words)


def random_delete(text: str, rate: float = 0.1, seed: int = 0) -> str:
    """Delete each word with probability `rate` (at least one word is always kept)."""
    _check_rate(rate)
    rng, words = random.Random(seed), _words(text)
    kept = [w for w in words if rng.random() >= rate]
    return " ".join(kept or ([rng.choice(words)] if words else []))


def random_swap(text: str, rate: float = 0.1, seed: int = 0) -> str:
    """Swap two random words, about `rate`·len times."""
    _check_rate(rate)
    rng, words = random.Random(seed), _words(text)
    n = max(1, round(rate * len(words))) if rate > 0 and len(words) > 1 else 0
    for _ in range(n):
        i, j = rng.sample(range(len(words)), 2)
        words[i], words[j] = words[j], words[i]
    return " ".join(words)


def eda(text: str, n: int = 4, rate: float = 0.1, seed: int = 0,
        thesaurus: Mapping[str, Sequence[str]] = THESAURUS) -> list[str]:
    """`n` augmented variants, cycling through replace, insert, swap and delete (seeds seed, seed+1, …)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    ops = [lambda t, s: synonym_replace(t, rate, s, thesaurus), lambda t, s: random_insert(t, rate, s, thesaurus),
           lambda t, s: random_swap(t, rate, s), lambda t, s: random_delete(t, rate, s)]
    return [ops[i % len(ops)](text, seed + i) for i in range(n)]


def embedding_thesaurus(words: Sequence[str], model=None, k: int = 3, min_similarity: float = 0.5) -> dict[str, list[str]]:
    """Synonym candidates from embedding neighbours: for each word, its `k` nearest other words of the
    list with cosine ≥ `min_similarity`, under a local sentence-transformers model (default: the
    offline MiniLM from the `semantic` extra)."""
    words = list(dict.fromkeys(words))
    if len(words) < 2:
        raise ValueError("embedding_thesaurus needs at least two distinct words")
    vectors = embed(words, model)
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    out = {}
    for i, word in enumerate(words):
        order = np.argsort(-sims[i])[:k]
        out[word] = [words[j] for j in order if sims[i, j] >= min_similarity]
    return out


# ------------------------------------------------------------------------------------------- code
_NAMES = ["value", "item", "result", "data", "count", "index", "total", "node", "elem", "acc", "buf", "tmp",
          "key", "entry", "obj", "arg", "res", "out", "cur", "part"]


class _Bindings(ast.NodeVisitor):
    """Names a snippet binds itself (variables, parameters, plain functions), with every place they appear."""

    def __init__(self):
        self.bound: set[str] = set()
        self.blocked: set[str] = set()  # imported, global/nonlocal, class attributes, keyword-argument names
        self.spans: list[tuple[int, int, int, str]] = []  # (line, start col, end col, name)
        self.all_names: set[str] = set()
        self._class_depth = 0

    def visit_Name(self, node):
        self.all_names.add(node.id)
        if isinstance(node.ctx, ast.Store):
            (self.blocked if self._class_depth else self.bound).add(node.id)
        self.spans.append((node.lineno, node.col_offset, node.end_col_offset, node.id))

    def visit_arg(self, node):
        self.all_names.add(node.arg)
        self.bound.add(node.arg)
        self.spans.append((node.lineno, node.col_offset, node.col_offset + len(node.arg), node.arg))
        self.generic_visit(node)

    def _function(self, node):
        self.all_names.add(node.name)
        (self.blocked if self._class_depth else self.bound).add(node.name)
        self.spans.append((node.lineno, -1, -1, node.name))  # column found later from the source line
        depth, self._class_depth = self._class_depth, 0
        self.generic_visit(node)
        self._class_depth = depth

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def visit_ClassDef(self, node):
        self.all_names.add(node.name)
        self.blocked.add(node.name)
        self._class_depth += 1
        self.generic_visit(node)
        self._class_depth -= 1

    def visit_Import(self, node):
        for alias in node.names:
            self.blocked.add((alias.asname or alias.name).split(".")[0])

    visit_ImportFrom = visit_Import

    def visit_Global(self, node):
        self.blocked.update(node.names)

    visit_Nonlocal = visit_Global

    def visit_keyword(self, node):
        if node.arg:
            self.blocked.add(node.arg)  # f(x=1): renaming a parameter x would break this call
        self.generic_visit(node)

    def visit_JoinedStr(self, node):
        if sys.version_info < (3, 12):  # f-string inner positions are unreliable before 3.12: leave those names
            self.blocked.update(n.id for n in ast.walk(node) if isinstance(n, ast.Name))
        self.generic_visit(node)

    def visit_Attribute(self, node):
        self.all_names.add(node.attr)
        self.generic_visit(node)


def rename_identifiers(code: str, rate: float = 1.0, seed: int = 0) -> str:
    """Rename about `rate` of the variables, parameters and functions a code snippet defines itself,
    consistently, keeping comments and layout. The result parses and behaves the same; names it does
    not own (imports, builtins, attributes, class members, keyword arguments, globals) are left alone."""
    _check_rate(rate)
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        raise ValueError(f"code does not parse (line {exc.lineno}): {exc.msg}") from exc
    found = _Bindings()
    found.visit(tree)
    reserved = set(dir(builtins)) | set(keyword.kwlist) | set(keyword.softkwlist)
    owned = sorted(n for n in found.bound - found.blocked - reserved - {"self", "cls"} if not n.startswith("__"))
    rng = random.Random(seed)
    chosen = rng.sample(owned, round(rate * len(owned)))
    mapping, used = {}, reserved | found.all_names  # never collide with any name the code mentions
    for name in sorted(chosen):
        base = rng.choice(_NAMES)
        new, i = base, 1
        while new in used:
            new, i = f"{base}{i}", i + 1
        used.add(new)
        mapping[name] = new
    lines = code.splitlines(keepends=True)
    edits: dict[int, list[tuple[int, int, str]]] = {}
    for line, start, end, name in found.spans:
        if name not in mapping:
            continue
        if start < 0:  # a def: find the name after the `def` keyword on its line
            m = re.search(rf"\bdef\s+({re.escape(name)})\b", lines[line - 1])
            start, end = m.start(1), m.end(1)
        edits.setdefault(line, []).append((start, end, mapping[name]))
    for line, spans in edits.items():
        text = lines[line - 1].encode()  # ast columns are UTF-8 byte offsets
        for start, end, new in sorted(set(spans), reverse=True):
            text = text[:start] + new.encode() + text[end:]
        lines[line - 1] = text.decode()
    return "".join(lines)


# ------------------------------------------------------------------------------------ time series
def _series(x) -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    if arr.ndim not in (1, 2) or len(arr) < 2:
        raise ValueError(f"expected a time series of shape (time,) or (time, channels) with ≥ 2 steps, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("time series has NaN or inf values; fill them first (cookbook.data.clean.fill_missing)")
    return arr


def gaussian_noise(x, sigma: float = 0.05, seed: int = 0, relative: bool = True) -> np.ndarray:
    """x + N(0, σ²) noise; with `relative`, σ is a share of each channel's standard deviation."""
    arr = _series(x)
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    scale = sigma * arr.std(axis=0) if relative else sigma
    return arr + np.random.default_rng(seed).normal(size=arr.shape) * scale


def window_slice(x, ratio: float = 0.9, seed: int = 0) -> np.ndarray:
    """A random contiguous window of `ratio`·len steps, stretched back to the full length by linear
    interpolation (window slicing, Le Guennec et al. 2016)."""
    arr = _series(x)
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    n = len(arr)
    width = max(2, int(round(ratio * n)))
    start = int(np.random.default_rng(seed).integers(0, n - width + 1))
    window = arr[start : start + width]
    old, new = np.arange(width), np.linspace(0, width - 1, n)
    if arr.ndim == 1:
        return np.interp(new, old, window)
    return np.stack([np.interp(new, old, window[:, c]) for c in range(arr.shape[1])], axis=1)


def sliding_windows(x, width: int, stride: int = 1) -> np.ndarray:
    """All windows of `width` steps every `stride` steps: shape (n_windows, width[, channels])."""
    arr = _series(x)
    if not 1 <= width <= len(arr) or stride < 1:
        raise ValueError(f"need 1 <= width <= {len(arr)} and stride >= 1, got width={width}, stride={stride}")
    starts = range(0, len(arr) - width + 1, stride)
    return np.stack([arr[s : s + width] for s in starts])


# -------------------------------------------------------------------------------- back-translation
def back_translate(texts: str | Sequence[str], forward: Callable, backward: Callable) -> str | list[str]:
    """Paraphrase by translating to a pivot language and back: backward(forward(texts)).

    `forward`/`backward` are any translate functions taking a list of strings and returning a list
    of the same length (e.g. a transformers translation pipeline wrapped in a lambda). A single string
    in gives a single string out.
    """
    single = isinstance(texts, str)
    batch = [texts] if single else list(texts)
    for name, fn in (("forward", forward), ("backward", backward)):
        if not callable(fn):
            raise TypeError(f"{name} must be a callable taking a list of str, got {type(fn).__name__}")
    out = batch
    for name, fn in (("forward", forward), ("backward", backward)):
        result = list(fn(out))
        if len(result) != len(out) or not all(isinstance(t, str) for t in result):
            raise ValueError(f"{name} translation returned {len(result)} items for {len(out)} texts "
                             "(or non-str items); it must return one string per input")
        out = result
    return out[0] if single else out
