"""Text cleaning: regex clean-up, lower-casing, stopword removal (built-in list) and PII masking.

All functions take and return one `str`; use them on a pandas column with `clean.map_text` (which
reports what changed) or `series.map(fn)`, and on a `datasets.Dataset` with `ds.map`.
"""

from __future__ import annotations

import ast
import html
import inspect
import ipaddress
import re
import unicodedata
from collections.abc import Iterable

__all__ = ["STOPWORDS", "clean_text", "docstrings", "find_pii", "mask_pii", "remove_stopwords"]

# A compact English stopword list (function words only), built in so nothing is downloaded. Negations
# (no, nor, not) are deliberately kept out: dropping them flips the meaning of "not bad".
STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between
both but by can could did do does doing down during each few for from further had has have having he her here
hers herself him himself his how i if in into is it its itself just me more most my myself now of
off on once only or other our ours ourselves out over own same she should so some such than that the their
theirs them themselves then there these they this those through to too under until up very was we were what
when where which while who whom why will with would you your yours yourself yourselves
""".split())

_URL = re.compile(r"\b(?:https?://|www\.)\S+", re.IGNORECASE)
_HTML_TAG = re.compile(r"<[^>\n]{1,200}>")
_PUNCT = re.compile(r"[^\w\s]")
_SPACES = re.compile(r"\s+")
_WORD = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")


def _require_str(text) -> str:
    if not isinstance(text, str):
        raise TypeError(f"expected str, got {type(text).__name__} ({text!r:.40}); fill or drop missing values first")
    return text


def clean_text(text: str, *, lowercase: bool = True, strip_html: bool = True, strip_urls: bool = True,
               strip_punctuation: bool = False) -> str:
    """Regex clean-up for natural-language text: NFKC, HTML tags/entities, URLs, punctuation, spaces, case."""
    text = unicodedata.normalize("NFKC", _require_str(text))
    if strip_html:
        text = html.unescape(_HTML_TAG.sub(" ", text))
    if strip_urls:
        text = _URL.sub(" ", text)
    if strip_punctuation:
        text = _PUNCT.sub(" ", text)
    text = _SPACES.sub(" ", text).strip()
    return text.lower() if lowercase else text


def remove_stopwords(text: str, stopwords: Iterable[str] = STOPWORDS) -> str:
    """Drop stopwords (case-insensitive) and re-join the remaining words and punctuation with spaces."""
    stop = stopwords if isinstance(stopwords, (set, frozenset)) else frozenset(stopwords)
    return " ".join(w for w in _WORD.findall(_require_str(text)) if w.lower() not in stop)


_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.]*\d)")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")  # validated by ipaddress
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]\d{2,4}){1,4}(?![\w])")
_DATE_LIKE = re.compile(r"^\d{4}-\d{1,2}-\d{1,2}$|^\d{1,2}[./-]\d{1,2}[./-]\d{2,4}$")


def _is_ip(candidate: str) -> bool:
    try:
        ipaddress.ip_address(candidate)
        return True
    except ValueError:
        return False


def _is_phone(candidate: str) -> bool:
    digits = sum(ch.isdigit() for ch in candidate)
    return 7 <= digits <= 15 and not _DATE_LIKE.match(candidate.strip())


def _pii_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, kind) of each PII match, earlier kinds winning overlaps (email > ip > phone)."""
    found: list[tuple[int, int, str]] = []

    def add(kind, match):
        if not any(s < match.end() and match.start() < e for s, e, _ in found):
            found.append((*match.span(), kind))

    for m in _EMAIL.finditer(text):
        add("email", m)
    for m in [*_IPV4.finditer(text), *_IPV6.finditer(text)]:
        if _is_ip(m.group()):
            add("ip", m)
    for m in _PHONE.finditer(text):
        if _is_phone(m.group()):
            add("phone", m)
    return sorted(found)


def find_pii(text: str) -> list[tuple[str, str]]:
    """PII found in a text as (kind, value) pairs in reading order; kinds: email, ip, phone."""
    text = _require_str(text)
    return [(kind, text[s:e]) for s, e, kind in _pii_spans(text)]


def mask_pii(text: str, *, email: str = "<EMAIL>", ip: str = "<IP>", phone: str = "<PHONE>") -> str:
    """Replace e-mail addresses, IPv4/IPv6 addresses and phone-like numbers with placeholders."""
    text = _require_str(text)
    tokens = {"email": email, "ip": ip, "phone": phone}
    for s, e, kind in reversed(_pii_spans(text)):  # from the end, so earlier offsets stay valid
        text = text[:s] + tokens[kind] + text[e:]
    return text


def docstrings(code: str, first_line: bool = True) -> list[str]:
    """The natural-language text inside Python source: module, class and function docstrings in order
    (only their summary line with `first_line`). Code that does not parse gives an empty list."""
    try:
        tree = ast.parse(_require_str(code))
    except (SyntaxError, ValueError):
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc and doc.strip():
                doc = inspect.cleandoc(doc)
                out.append(doc.strip().split("\n\n")[0].replace("\n", " ") if first_line else doc)
    return out
