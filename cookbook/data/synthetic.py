"""Synthetic data with known defects, so cleaning and deduplication can be scored, not just eyeballed.

- `messy_table(n, seed)` → (dirty DataFrame, `MessyTruth`): a customer table with injected duplicate
  keys, missing values, outliers, mixed-offset and invalid timestamps, mojibake/NFD/bytes text and
  whitespace/control-character damage. `score(pipeline_result, truth)` gives precision/recall per defect.
- `near_duplicates(n, seed)` → documents plus (i, j, Jaccard) of planted near-duplicate pairs.
"""

from __future__ import annotations

import dataclasses
import datetime
import unicodedata

import numpy as np
import pandas as pd

from cookbook.data.dedup.signatures import shingles

__all__ = ["DEFECTS", "MessyTruth", "messy_table", "near_duplicates", "score"]

_FIRST = ["Ana", "Björn", "Chloé", "Dmitri", "Emma", "François", "Grace", "Hiro", "Inès", "José", "Kai", "Léa",
          "Mateo", "Nuño", "Olga", "Priya", "Quentin", "Renée", "Søren", "Tomás", "Uma", "Vik", "Wen", "Zoë"]
_LAST = ["Müller", "García", "Smith", "Dubois", "Kowalski", "Rossi", "Nguyen", "Øvergaard", "Silva", "Chen",
         "Brontë", "Jónsson", "Novák", "Yılmaz", "Okafor", "Tanaka"]
_CITIES = ["Zürich", "São Paulo", "Kraków", "Montréal", "Malmö", "Reykjavík", "Bogotá", "Paris", "Lisbon",
           "Tokyo", "Córdoba", "Berlin"]
_COMMENTS = ["Très bien, livraison rapide", "Service client médiocre", "Excelente atención, volveré",
             "Größe passt nicht, Rücksendung", "Parfait — rien à dire", "Café froid à l'arrivée",
             "Smooth checkout, great price", "Naïve packaging but fine", "Entrega atrasada, pésimo",
             "Schöne Farbe, gute Qualität"]
_OFFSETS = ["+05:30", "-07:00", "+02:00", "-03:00", "+09:00"]

# Each defect type and the pipeline rule that is meant to catch it (matched by name prefix in `score`).
DEFECTS = {
    "duplicate key": "drop_duplicate_keys",
    "missing value": "fill_missing",
    "outlier": ("zscore_outliers", "iqr_outliers"),
    "timezone/format": "to_utc",
    "invalid timestamp": "to_utc",
    "encoding": "fix_unicode",
    "whitespace/control": "normalize_whitespace",
}
_ROW_DEFECTS = {"duplicate key", "outlier", "invalid timestamp"}  # fixed by removing the row


@dataclasses.dataclass
class MessyTruth:
    """What `messy_table` injected: the clean table and one row per defect (row, column, defect)."""

    clean: pd.DataFrame
    defects: pd.DataFrame

    def counts(self) -> pd.Series:
        return self.defects["defect"].value_counts().reindex(list(DEFECTS), fill_value=0)


def messy_table(n: int = 1000, seed: int = 0, rate: float = 0.02) -> tuple[pd.DataFrame, MessyTruth]:
    """A dirty customer table of n rows (+ duplicates) and its ground truth; about `rate`·n rows per defect."""
    if n < 50:
        raise ValueError(f"n must be at least 50 so every defect type appears, got {n}")
    if not 0 < rate <= 0.1:
        raise ValueError(f"rate must be in (0, 0.1], got {rate}")
    rng = np.random.default_rng(seed)
    first, last = rng.choice(_FIRST, n), rng.choice(_LAST, n)
    signup = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 366 * 86400, n), unit="s")
    clean = pd.DataFrame({
        "id": np.arange(1000, 1000 + n),
        "name": [f"{f} {la}" for f, la in zip(first, last, strict=True)],
        "email": [f"{unicodedata.normalize('NFKD', f).encode('ascii', 'ignore').decode().lower()}.{i}@example.com"
                  for i, f in enumerate(first)],
        "city": rng.choice(_CITIES, n).astype(object),
        "age": rng.integers(18, 81, n).astype(float),
        "income": rng.normal(52_000, 9_000, n).round(2),
        "signup": pd.Series(signup, dtype="datetime64[ns, UTC]"),
        "comment": rng.choice(_COMMENTS, n).astype(object),
    })
    dirty = clean.astype({"city": object, "comment": object}).copy()
    dirty["signup"] = [ts.strftime("%Y-%m-%dT%H:%M:%SZ") for ts in clean["signup"]]  # canonical UTC text
    dirty = dirty.astype({"signup": object})
    per_type = max(2, int(round(rate * n)))
    rows = rng.permutation(n)  # disjoint rows per defect type, so every defect is scored on its own
    take = iter(np.array_split(rows[: per_type * 6], 6))
    defects = []

    for r in next(take):  # missing values: half in a numeric column, half in a categorical one
        column = "age" if r % 2 else "city"
        dirty.loc[r, column] = np.nan if column == "age" else None
        defects.append((r, column, "missing value"))
    sigma, mu = clean["income"].std(), clean["income"].mean()
    for k, r in enumerate(next(take)):  # outliers: income far out (z-score rule), age impossible (IQR rule)
        if k % 2:
            dirty.loc[r, "income"] = round(mu + rng.choice([-1, 1]) * rng.uniform(10, 20) * sigma, 2)
            defects.append((r, "income", "outlier"))
        else:
            dirty.loc[r, "age"] = float(rng.integers(140, 400))
            defects.append((r, "age", "outlier"))
    for k, r in enumerate(next(take)):  # timestamps with an offset or naive (UTC wall clock), same instant
        ts = clean.loc[r, "signup"]
        if k % 3 == 2:
            dirty.loc[r, "signup"] = ts.strftime("%Y-%m-%d %H:%M:%S")
        else:
            local = ts.tz_convert(_tz(_OFFSETS[k % len(_OFFSETS)]))
            dirty.loc[r, "signup"] = local.isoformat()
        defects.append((r, "signup", "timezone/format"))
    for k, r in enumerate(next(take)):  # timestamps no parser can read
        dirty.loc[r, "signup"] = ["2024-02-30 10:00:00", "not a date", "2024-13-01T00:00:00Z", "soon"][k % 4]
        defects.append((r, "signup", "invalid timestamp"))
    accented = [c for c in _COMMENTS if not c.isascii()]
    for k, r in enumerate(next(take)):  # encoding damage: mojibake, decomposed (NFD), raw bytes
        text = clean.loc[r, "comment"] = accented[int(rng.integers(len(accented)))]  # damage needs non-ASCII
        dirty.at[r, "comment"] = [text.encode("utf-8").decode("cp1252", errors="replace"),
                                  unicodedata.normalize("NFD", text), text.encode("utf-8"),
                                  text.encode("cp1252")][k % 4]
        defects.append((r, "comment", "encoding"))
    for k, r in enumerate(next(take)):  # whitespace and invisible characters
        text = clean.loc[r, "comment"]
        dirty.at[r, "comment"] = ["  " + text + " \t", text.replace(" ", "  ", 1), text + "\x00",
                                  "\u200b" + text, text.replace(" ", "\n", 1) + "\x1b"][k % 5]
        defects.append((r, "comment", "whitespace/control"))
    # duplicate keys: exact copies of clean rows appended at the end (the first occurrence is the good one)
    untouched = rows[per_type * 6 :]
    sources = rng.choice(untouched, per_type, replace=False)
    copies = dirty.loc[sources].copy()
    copies.index = np.arange(n, n + per_type)
    dirty = pd.concat([dirty, copies])
    defects += [(r, None, "duplicate key") for r in copies.index]
    table = pd.DataFrame(defects, columns=["row", "column", "defect"]).astype({"row": int})
    return dirty, MessyTruth(clean, table.sort_values(["defect", "row"], ignore_index=True))


def _tz(offset: str) -> datetime.timezone:
    """A fixed UTC offset such as "+05:30" as a tzinfo."""
    sign = 1 if offset[0] == "+" else -1
    hours, minutes = map(int, offset[1:].split(":"))
    return datetime.timezone(sign * datetime.timedelta(hours=hours, minutes=minutes))


def _rule_matches(rule_name: str, rule) -> bool:
    prefixes = (rule,) if isinstance(rule, str) else rule
    return any(str(rule_name).startswith(p + "(") or str(rule_name) == p for p in prefixes)


def score(result, truth: MessyTruth) -> pd.DataFrame:
    """Precision, recall and repair rate of a `clean.pipeline` result against the injected defects.

    Row defects count the rows the matching rule removed; cell defects count the cells it changed.
    `repaired` is the share of injected cells whose final value equals the clean value (cell defects).
    """
    rows = []
    for defect, rule in DEFECTS.items():
        truth_rows = truth.defects[truth.defects["defect"] == defect]
        if defect in _ROW_DEFECTS:
            by_rule = result.removed.loc[np.array([_rule_matches(n, rule) for n in result.removed["removed_by"]], dtype=bool)]
            flagged = set(by_rule.index)
            injected = set(truth_rows["row"])
            repaired = np.nan
        else:
            by_rule = result.changes.loc[np.array([_rule_matches(n, rule) for n in result.changes["rule"]], dtype=bool)]
            injected = set(zip(truth_rows["row"], truth_rows["column"], strict=True))
            flagged = set(zip(by_rule["row"], by_rule["column"], strict=True))
            repaired = np.mean([_repaired(result.frame, truth.clean, r, c, defect) for r, c in injected]) \
                if injected else np.nan
        hits = len(injected & flagged)
        rows.append({"defect": defect, "injected": len(injected), "flagged": len(flagged), "caught": hits,
                     "precision": hits / len(flagged) if flagged else np.nan,
                     "recall": hits / len(injected) if injected else np.nan, "repaired": repaired})
    return pd.DataFrame(rows).set_index("defect")


def _repaired(frame: pd.DataFrame, clean: pd.DataFrame, row, column, defect) -> bool:
    if row not in frame.index:
        return False
    value = frame.at[row, column]
    if defect == "missing value":
        return not pd.isna(value)  # imputed: any value (a mean cannot recover the truth)
    expected = clean.at[row, column]
    if isinstance(expected, pd.Timestamp):
        return isinstance(value, pd.Timestamp) and value == expected
    return value == expected


def near_duplicates(n: int = 200, seed: int = 0, *, length: int = 300, k: int = 5, max_edits: int = 40,
                    distractors: int | None = None) -> tuple[list[str], pd.DataFrame]:
    """`n` random documents, each with one edited copy (0..max_edits words replaced), plus unrelated ones.

    Returns the shuffled documents and a frame of the planted pairs (i, j, edits, jaccard) where
    `jaccard` is the exact Jaccard similarity of their k-token shingle sets (cookbook.data.dedup.shingles).
    """
    if n < 1 or length < 2 * k:
        raise ValueError(f"need n >= 1 and length >= 2k; got n={n}, length={length}, k={k}")
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["".join(rng.choice(letters, rng.integers(3, 9))) for _ in range(5000)]
    docs, pairs = [], []
    for _ in range(n):
        words = list(rng.choice(vocab, length))
        edited = list(words)
        edits = int(rng.integers(0, max_edits + 1))
        for pos in rng.choice(length, edits, replace=False):
            edited[pos] = "".join(rng.choice(letters, 10))  # a fresh word: every edit breaks shingles
        docs += [" ".join(words), " ".join(edited)]
        pairs.append((len(docs) - 2, len(docs) - 1, edits))
    docs += [" ".join(rng.choice(vocab, length)) for _ in range(n if distractors is None else distractors)]
    order = rng.permutation(len(docs))
    position = np.argsort(order)  # old index -> new index
    docs = [docs[i] for i in order]
    out = []
    for i, j, edits in pairs:
        a, b = sorted((int(position[i]), int(position[j])))
        sa, sb = shingles(docs[a], k), shingles(docs[b], k)
        out.append((a, b, edits, len(sa & sb) / len(sa | sb)))
    return docs, pd.DataFrame(out, columns=["i", "j", "edits", "jaccard"])
