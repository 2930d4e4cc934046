"""The training corpus: the Python standard library of the running interpreter, or a user's own files.

The stdlib is real code that is present on every machine, so every notebook runs offline. A user
corpus of local .txt/.jsonl/.json/.parquet files loads through the same `load()`.
"""

from __future__ import annotations

import hashlib
import sysconfig
import warnings
from pathlib import Path

import datasets

__all__ = ["fingerprint", "load", "split", "stdlib_files"]

_TEST_DIRS = {"test", "tests", "idle_test", "__pycache__", "site-packages", "dist-packages"}
_STRUCTURED = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


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


def _read_texts(root: Path, files: list[Path]) -> dict[str, list]:
    """Read UTF-8 files into columns; undecodable files are skipped and counted, never dropped silently."""
    columns: dict[str, list] = {"path": [], "text": [], "bytes": [], "lines": []}
    skipped = []
    for path in files:
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            skipped.append(str(path.relative_to(root)))
            continue
        columns["path"].append(path.relative_to(root).as_posix())
        columns["text"].append(text)
        columns["bytes"].append(len(raw))
        columns["lines"].append(text.count("\n") + (not text.endswith("\n") and bool(text)))
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} non-UTF-8 file(s): {', '.join(skipped[:5])}{' …' if len(skipped) > 5 else ''}",
            stacklevel=3,
        )
    return columns


def _load_structured(files: list[Path], text_column: str) -> datasets.Dataset:
    builders = {_STRUCTURED[f.suffix] for f in files}
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
    a folder of .txt files (one document each) or .jsonl/.json/.parquet files (one document per row,
    from `text_column`).
    """
    if path is None:
        root, files = stdlib_files(include_tests)
    else:
        root = Path(path).expanduser()
        if not root.exists():
            raise FileNotFoundError(f"corpus path {root} does not exist")
        candidates = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        files = [p for p in candidates if p.suffix in {".txt", ".py", *_STRUCTURED}]
        if root.is_file():
            root = root.parent
    if not files:
        raise ValueError(f"no .txt/.py/.jsonl/.json/.parquet files found under {path}")

    structured = [f for f in files if f.suffix in _STRUCTURED]
    if structured and len(structured) != len(files):
        raise ValueError("mix of plain-text and structured files: load one format at a time")
    ds = _load_structured(files, text_column) if structured else datasets.Dataset.from_dict(_read_texts(root, files))
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
    """
    if not 0 < validation < 1:
        raise ValueError(f"validation share must be in (0, 1), got {validation}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    buckets = [_bucket(p) for p in ds["path"]]
    # Validation is the low end of the hash range; the kept fraction scales both sides alike.
    val_idx = [i for i, b in enumerate(buckets) if b < validation * fraction]
    train_idx = [i for i, b in enumerate(buckets) if validation <= b < validation + (1 - validation) * fraction]
    if not val_idx or not train_idx:
        raise ValueError(f"split of {len(ds)} documents left an empty side; use more documents or a larger fraction")
    return datasets.DatasetDict(train=ds.select(train_idx), validation=ds.select(val_idx))
