"""The training corpus: the Python standard library of the running interpreter, or a user's own files.

The stdlib is real code that is present on every machine, so every notebook runs offline. A user
corpus of local text files (`TEXT_SUFFIXES`: .txt, .md, .rst, .py, … in any case) or structured files
(.jsonl/.json/.parquet) loads through the same `load()`; every file it does not load is reported with
the reason (`skipped(path)` lists them).
"""

from __future__ import annotations

import hashlib
import sysconfig
import warnings
from pathlib import Path

import datasets

__all__ = ["STRUCTURED_SUFFIXES", "TEXT_SUFFIXES", "fingerprint", "load", "skipped", "split", "stdlib_files"]

_TEST_DIRS = {"test", "tests", "idle_test", "__pycache__", "site-packages", "dist-packages"}
# One document per file: prose, markup and source code. Suffixes are matched case-insensitively (NOTES.TXT).
TEXT_SUFFIXES = (".txt", ".text", ".md", ".markdown", ".rst", ".tex", ".html", ".htm", ".xml", ".py", ".pyi",
                 ".c", ".h", ".cc", ".cpp", ".hpp", ".java", ".js", ".ts", ".go", ".rs", ".sh", ".css", ".yaml",
                 ".yml", ".toml", ".ini", ".cfg")
# One document per row, from the `text_column`.
STRUCTURED_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def stdlib_files(include_tests: bool = False) -> tuple[Path, list[Path]]:
    """The stdlib root and its sorted .py files (test suites left out unless `include_tests`)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in sorted(root.rglob("*.py")):
        parts = set(path.relative_to(root).parts[:-1])
        if "site-packages" in parts or "dist-packages" in parts:
            continue  # third-party code, not the standard library
        if not include_tests and (parts & _TEST_DIRS or path.name.startswith("test_")):
            continue
        files.append(path)
    return root, files


def _read_texts(root: Path, files: list[Path]) -> tuple[dict[str, list], list[tuple[str, str]]]:
    """Read UTF-8 files into columns; undecodable ones come back as (path, reason), never dropped silently."""
    columns: dict[str, list] = {"path": [], "text": [], "bytes": [], "lines": []}
    undecodable = []
    for path in files:
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            undecodable.append((path.relative_to(root).as_posix(),
                                f"not UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})"))
            continue
        columns["path"].append(path.relative_to(root).as_posix())
        columns["text"].append(text)
        columns["bytes"].append(len(raw))
        columns["lines"].append(text.count("\n") + (not text.endswith("\n") and bool(text)))
    return columns, undecodable


def _scan(root: Path) -> tuple[Path, list[Path], list[tuple[str, str]]]:
    """(the folder paths are relative to, the files to load, (path, reason) for every other file)."""
    if root.is_file():  # a file named explicitly is read whatever its name, if its suffix is a format
        if root.suffix.lower() not in (*TEXT_SUFFIXES, *STRUCTURED_SUFFIXES):
            return root.parent, [], [(root.name, f"suffix {root.suffix or '(none)'} is not a corpus format")]
        return root.parent, [root], []
    files, skipped_files = [], []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root)
        suffix = path.suffix.lower()
        if any(part.startswith(".") for part in relative.parts):
            skipped_files.append((relative.as_posix(), "hidden (.git, .ipynb_checkpoints, …)"))
        elif suffix in TEXT_SUFFIXES or suffix in STRUCTURED_SUFFIXES:
            files.append(path)
        else:
            skipped_files.append((relative.as_posix(), f"suffix {path.suffix or '(none)'} is not a corpus format"))
    return root, files, skipped_files


def _summary(skipped_files: list[tuple[str, str]], limit: int = 3) -> str:
    """'2 with suffix .png is not a corpus format (a.png, b.png); 1 not UTF-8 (…) (bad.txt)', by reason."""
    by_reason: dict[str, list[str]] = {}
    for path, reason in skipped_files:
        key = reason.split(" (byte")[0]  # group undecodable files whatever their first bad byte
        by_reason.setdefault(key, []).append(path)
    return "; ".join(f"{len(paths)} {reason}: {', '.join(paths[:limit])}{', …' if len(paths) > limit else ''}"
                     for reason, paths in by_reason.items())


def _formats() -> str:
    return f"text: {' '.join(TEXT_SUFFIXES)}; structured: {' '.join(STRUCTURED_SUFFIXES)} (any case)"


def skipped(path: str | Path) -> list[tuple[str, str]]:
    """Every file under `path` that `load(path)` does not read, as (relative path, reason): unknown suffix,
    hidden, or not UTF-8."""
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"corpus path {root} does not exist")
    root, files, skipped_files = _scan(root)
    texts = [f for f in files if f.suffix.lower() in TEXT_SUFFIXES]
    return sorted(skipped_files + _read_texts(root, texts)[1])


def _load_structured(files: list[Path], text_column: str) -> datasets.Dataset:
    builders = {STRUCTURED_SUFFIXES[f.suffix.lower()] for f in files}
    if len(builders) > 1:
        raise ValueError(f"mix of file types {sorted(builders)}: load one format at a time")
    ds = datasets.load_dataset(builders.pop(), data_files=[str(f) for f in files], split="train")
    if text_column not in ds.column_names:
        raise ValueError(f"no column {text_column!r} in {files[0].name}; columns are {ds.column_names}")
    ds = ds.rename_column(text_column, "text") if text_column != "text" else ds
    missing = sum(t is None for t in ds["text"])
    if missing:
        warnings.warn(f"skipped {missing} row(s) with no {text_column!r} value", stacklevel=3)
        ds = ds.filter(lambda row: row["text"] is not None)
    if "path" not in ds.column_names:
        ds = ds.map(lambda _, i: {"path": f"row-{i}"}, with_indices=True)
    return ds.map(
        lambda row: {"bytes": len(row["text"].encode("utf-8")), "lines": row["text"].count("\n") + 1}
    ).select_columns(["path", "text", "bytes", "lines"])


def load(path: str | Path | None = None, *, text_column: str = "text", include_tests: bool = False):
    """Load a corpus as a `datasets.Dataset` with columns path, text, bytes, lines.

    `path=None` gives the Python standard library source (no download). Otherwise `path` is a file or
    a folder of text files (one document each; `TEXT_SUFFIXES`, any case) or of .jsonl/.json/.parquet
    files (one document per row, from `text_column`). Every other file (unknown suffix, hidden, not
    UTF-8) is skipped with a warning that says why; `skipped(path)` lists them all. Shown in notebooks/02 §1.
    """
    if path is None:
        root, files = stdlib_files(include_tests)
        skipped_files: list[tuple[str, str]] = []
    else:
        root = Path(path).expanduser()
        if not root.exists():
            raise FileNotFoundError(f"corpus path {root} does not exist")
        root, files, skipped_files = _scan(root)
    if not files:
        raise ValueError(f"no corpus files found under {path}" + (f" (skipped {_summary(skipped_files)})"
                                                                 if skipped_files else "") + f"; {_formats()}")
    structured = [f for f in files if f.suffix.lower() in STRUCTURED_SUFFIXES]
    if structured and len(structured) != len(files):
        plain = [f for f in files if f not in structured]
        raise ValueError(f"mix of plain-text ({len(plain)}, e.g. {plain[0].name}) and structured "
                         f"({len(structured)}, e.g. {structured[0].name}) files: load one format at a time")
    if structured:
        ds = _load_structured(files, text_column)
    else:
        columns, undecodable = _read_texts(root, files)
        skipped_files += undecodable
        ds = datasets.Dataset.from_dict(columns)
    if skipped_files:
        where = "" if path is None else f" under {path}"
        warnings.warn(f"skipped {len(skipped_files)} file(s){where}: {_summary(skipped_files)}"
                      + ("" if path is None else f". corpus.skipped({str(path)!r}) lists them all; {_formats()}"),
                      stacklevel=2)
    if len(ds) == 0:
        raise ValueError(f"corpus at {path or root} has no readable document")
    empty = sum(1 for n in ds["bytes"] if n == 0)
    if len(ds) == empty:
        raise ValueError(f"corpus at {path or root} has no text (all {len(ds)} documents are empty)")
    return ds


def fingerprint(ds: datasets.Dataset) -> str:
    """A short hash of the document list and sizes, so two runs can tell whether they saw the same corpus."""
    digest = hashlib.sha256()
    for path, size in zip(ds["path"], ds["bytes"], strict=True):
        digest.update(f"{path}\0{size}\n".encode())
    return digest.hexdigest()[:12]


def _bucket(path: str) -> float:
    """A stable number in [0, 1) from a document's path (same on every machine and Python run)."""
    return int.from_bytes(hashlib.sha1(path.encode()).digest()[:8], "big") / 2**64


def split(ds: datasets.Dataset, validation: float = 0.05, fraction: float = 1.0) -> datasets.DatasetDict:
    """Deterministic train/validation split by path hash, keeping `fraction` of the documents.

    A document's side never changes when the corpus grows, so validation stays unseen across runs.
    With two documents or more, neither side is ever empty: when the hash rule leaves one empty (a tiny
    corpus or fraction: 630 stdlib files on Python 3.13 have no hash below 0.05 × 0.05), the document
    nearest to that side's hash range joins it, with a warning (that choice can change as the corpus
    grows). Shown in notebooks/02 §3.
    """
    if not 0 < validation < 1:
        raise ValueError(f"validation share must be in (0, 1), got {validation}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    n = len(ds)
    if n < 2:
        raise ValueError(f"cannot split {n} document(s) into train and validation: it takes at least 2")
    buckets = [_bucket(p) for p in ds["path"]]
    # Validation is the low end of the hash range; the kept fraction scales both sides alike.
    val_idx = [i for i, b in enumerate(buckets) if b < validation * fraction]
    train_idx = [i for i, b in enumerate(buckets) if validation <= b < validation + (1 - validation) * fraction]
    moved = []
    if not val_idx:  # the lowest hash is the first document validation would take as it grows
        val_idx = [min(range(n), key=buckets.__getitem__)]
        train_idx = [i for i in train_idx if i != val_idx[0]]
        moved.append(("validation", val_idx[0]))
    if not train_idx:  # the lowest hash above the validation range, else the highest hash left
        rest = [i for i in range(n) if i not in val_idx]
        above = [i for i in rest if buckets[i] >= validation]
        pick = min(above, key=buckets.__getitem__) if above else max(rest or val_idx, key=buckets.__getitem__)
        val_idx = [i for i in val_idx if i != pick]
        train_idx = [pick]
        moved.append(("train", pick))
    if moved:
        sides = {side for side, _ in moved}
        advice = "more documents" + (" or a larger fraction" if fraction < 1 else "") + \
            (" or a larger validation share" if "validation" in sides else "") + \
            (" or a smaller validation share" if "train" in sides else "")
        detail = "; ".join(f"{side} takes {ds[i]['path']!r}" for side, i in moved)
        warnings.warn(f"the hash split of {n} documents (validation={validation}, fraction={fraction}) left a "
                      f"side empty: {detail}, so each side has one. Use {advice} for a split that stays "
                      "put as the corpus grows", stacklevel=2)
    return datasets.DatasetDict(train=ds.select(sorted(train_idx)), validation=ds.select(sorted(val_idx)))
