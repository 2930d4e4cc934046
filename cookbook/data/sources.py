"""The profile's corpus: the stdlib sample (`smoke`) or the environment corpus (`full`), built once and cached.

The environment corpus is every Python source file of the running interpreter, the standard library and
every installed package, with tests left out: hundreds of MB present offline on every machine that has
the cookbook installed. Before training it is cleaned with the cookbook's own data tools (notebook 01's
methods applied to the real training corpus):

1. per-file filters of the Codex paper (Chen et al. 2021, §3.1): undecodable, empty, over 1 MB, a line
   over 1000 characters, mean line over 100, under 25% alphanumeric (data tables, not code);
2. exact duplicates removed (`dedup.exact`), then near-duplicate clusters reduced to one copy
   (`dedup.minhash`, Jaccard ≥ 0.8 on 5-token shingles);
3. split by whole top-level package (`split`), so vendored copies and sibling modules never straddle the
   train/validation boundary and the validation loss is honest.

The cleaned documents and the counts are saved under `cookbook.env.cache_dir()`, keyed by the environment's
file list, so every `full` notebook reuses one build.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import shutil
import site
import sys
import sysconfig
import time
import warnings
from collections import Counter
from pathlib import Path

import datasets
import numpy as np

from cookbook.data import corpus, dedup
from cookbook.env import cache_dir, quiet_progress

__all__ = ["CORPORA", "environment", "environment_files", "for_profile", "report", "split"]

CORPORA = ("stdlib", "environment")
_RECIPE = 1  # bump when the cleaning changes: a new cache key, a fresh build
_SKIP_DIRS = {"test", "tests", "testing", "idle_test", "__pycache__"}
_ALNUM = bytes(range(48, 58)) + bytes(range(65, 91)) + bytes(range(97, 123))
_MAX_BYTES, _MAX_LINE, _MAX_MEAN_LINE, _MIN_ALNUM = 1_000_000, 1000, 100, 0.25


def _roots() -> list[tuple[str, Path]]:
    """(label, folder) of the environment's Python source: the stdlib, then each site-packages folder."""
    paths = sysconfig.get_paths()
    folders = [paths["stdlib"], paths["purelib"], paths["platlib"], *site.getsitepackages()]
    roots, seen, names = [], set(), Counter()
    for folder in map(Path, folders):
        folder = folder.resolve()
        if folder in seen or not folder.is_dir():
            continue
        seen.add(folder)
        label = "stdlib" if not roots else folder.name
        names[label] += 1
        roots.append((label if names[label] == 1 else f"{label}-{names[label]}", folder))
    return roots


def environment_files() -> list[tuple[str, str, Path]]:
    """(path, package, file) of every .py source of the environment, tests left out, sorted by path.

    `path` is `<root>/<relative path>` (root: `stdlib`, `site-packages` ...); `package` is the top-level
    package or module it belongs to (`site-packages/torch`, `stdlib/email`), the unit the split holds out.
    """
    found = []
    for label, root in _roots():
        for file in root.rglob("*.py"):
            rel = file.relative_to(root).parts
            folders = set(rel[:-1])
            if label == "stdlib" and folders & {"site-packages", "dist-packages"}:
                continue  # third-party code inside the stdlib folder: read from its own root
            if folders & _SKIP_DIRS or file.name.startswith("test_") or file.name.endswith("_test.py") \
                    or file.name == "conftest.py":
                continue
            top = rel[0].removesuffix(".py")
            found.append((f"{label}/{'/'.join(rel)}", f"{label}/{top}", file))
    return sorted(found)


def _verdict(raw: bytes) -> tuple[str | None, str]:
    """(reason the file is dropped or None, its text): the Codex paper's filters."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "not UTF-8", ""
    if not text.strip():
        return "empty", text
    if len(raw) > _MAX_BYTES:
        return "over 1 MB", text
    lengths = [len(line) for line in text.splitlines()]
    if max(lengths) > _MAX_LINE:
        return f"a line over {_MAX_LINE} characters", text
    if sum(lengths) / len(lengths) > _MAX_MEAN_LINE:
        return f"mean line over {_MAX_MEAN_LINE} characters", text
    if (len(raw) - len(raw.translate(None, _ALNUM))) / len(raw) < _MIN_ALNUM:
        return f"under {_MIN_ALNUM:.0%} alphanumeric", text
    return None, text


def _read(chunk: list[tuple[str, str, str]]) -> tuple[list[tuple], list[tuple[str, str]]]:
    """Read and filter a chunk of (path, package, file): kept (path, package, text, bytes, lines), dropped."""
    kept, dropped = [], []
    for path, package, file in chunk:
        raw = Path(file).read_bytes()
        reason, text = _verdict(raw)
        if reason:
            dropped.append((path, reason))
        else:
            kept.append((path, package, text, len(raw), text.count("\n") + (not text.endswith("\n"))))
    return kept, dropped


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _read_all(files, workers: int):
    """`_read` over every file, in `workers` processes (chunks of similar byte size, in file order)."""
    items = [(path, package, str(file)) for path, package, file in files]
    if workers == 1:
        return _read(items)
    sizes = np.cumsum([file.stat().st_size for _, _, file in files])
    bounds = np.searchsorted(sizes, np.linspace(0, sizes[-1], 4 * workers + 1)[1:-1])
    edges = sorted({0, *(int(b) + 1 for b in bounds), len(items)})
    # fork on Linux: no `if __name__ == "__main__"` guard needed in the caller; spawn where fork is unsafe.
    context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with warnings.catch_warnings():
        # Python >= 3.12 warns about fork() in any multi-threaded process (a Jupyter kernel is one);
        # the workers only read files and run str/bytes methods.
        warnings.filterwarnings("ignore", message=".*multi-threaded.*fork", category=DeprecationWarning)
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            parts = list(pool.map(_read, [items[s:e] for s, e in zip(edges[:-1], edges[1:], strict=True) if e > s]))
    return [row for kept, _ in parts for row in kept], [row for _, dropped in parts for row in dropped]


def _build(files, workers: int, threshold: float) -> tuple[datasets.Dataset, dict]:
    """Read, filter, deduplicate: the cleaned documents and the counts of each stage."""
    start, cpu = time.perf_counter(), os.times()
    kept, dropped = _read_all(files, workers)
    read_s = time.perf_counter() - start
    texts = [row[2] for row in kept]
    exact = dedup.exact(texts)
    unique = np.flatnonzero(exact.keep)
    near = dedup.minhash([texts[i] for i in unique], threshold=threshold, workers=workers)
    keep = unique[near.keep]
    columns = ["path", "package", "text", "bytes", "lines"]
    ds = datasets.Dataset.from_dict({name: [kept[i][c] for i in keep] for c, name in enumerate(columns)})
    stats = {
        "files": len(files),
        "mb": round(sum(file.stat().st_size for _, _, file in files) / 1e6, 1),
        "filtered": dict(Counter(reason for _, reason in dropped).most_common()),
        "exact_removed": len(exact.removed),
        "near_clusters": len(near.clusters),
        "near_removed": len(near.removed),
        "documents": len(ds),
        "clean_mb": round(sum(ds["bytes"]) / 1e6, 1),
        "packages": len(set(ds["package"])),
        "workers": workers,
        "read_s": round(read_s, 1),
        "exact_s": round(exact.seconds, 1),
        "minhash_s": round(near.seconds, 1),
        "build_s": round(time.perf_counter() - start, 1),
        # CPU seconds of this process and its workers: on a shared machine wall time says more about the others
        "cpu_s": round(sum(os.times()[:4]) - sum(cpu[:4]), 1),
    }
    return ds, stats


def _describe(stats: dict) -> str:
    filtered = ", ".join(f"{n} {reason}" for reason, n in stats["filtered"].items()) or "none"
    return (f"environment corpus {stats['fingerprint']}: {stats['files']:,} files, {stats['mb']} MB -> filtered "
            f"({filtered}) -> {stats['exact_removed']:,} exact duplicates removed -> {stats['near_removed']:,} "
            f"near-duplicates removed from {stats['near_clusters']:,} MinHash clusters -> {stats['documents']:,} "
            f"documents, {stats['clean_mb']} MB in {stats['packages']} packages "
            f"(built in {stats['build_s']} s, {stats['cpu_s']} CPU s, {stats['workers']} processes)")


def _folder(files, threshold: float) -> Path:
    """The cache folder of this environment's file list and cleaning recipe."""
    digest = hashlib.sha256(f"{_RECIPE}\0{threshold}\n".encode())
    for path, _, file in files:
        digest.update(f"{path}\0{file.stat().st_size}\n".encode())
    return cache_dir() / f"environment-corpus-{digest.hexdigest()[:12]}"


def environment(*, workers: int | None = None, threshold: float = 0.8, rebuild: bool = False,
                verbose: bool = True) -> datasets.Dataset:
    """The cleaned environment corpus (columns path, package, text, bytes, lines), built once and cached.

    The first call reads, filters and deduplicates on `workers` processes (default: every core) and
    prints the counts of each stage; later calls load the cached documents in about a second. The cache
    is keyed by the environment's file list, so installing a package gives a new build.
    """
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive int (processes), got {workers!r}")
    files = environment_files()
    if not files:
        raise ValueError(f"no Python source found under {', '.join(str(r) for _, r in _roots())}")
    folder = _folder(files, threshold)
    if rebuild:
        shutil.rmtree(folder, ignore_errors=True)
    if not (folder / "report.json").exists():
        ds, stats = _build(files, workers or _cores(), threshold)
        stats["fingerprint"] = corpus.fingerprint(ds)
        tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
        with quiet_progress():
            ds.save_to_disk(str(tmp / "documents"))
        (tmp / "report.json").write_text(json.dumps(stats, indent=1))
        try:
            tmp.replace(folder)  # atomic: a half-written corpus is never picked up
        except OSError:  # another process finished first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
        if verbose:
            print(_describe(stats))
    return datasets.load_from_disk(str(folder / "documents"))


def report(*, threshold: float = 0.8) -> dict:
    """The counts of the cached environment corpus build (files, MB, each filter, duplicates, seconds)."""
    folder = _folder(environment_files(), threshold)
    if not (folder / "report.json").exists():
        environment(threshold=threshold, verbose=False)
    return json.loads((folder / "report.json").read_text())


def _rank(key: str) -> float:
    """A stable number in [0, 1) from a string (same on every machine and Python run)."""
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2**64


def split(ds: datasets.Dataset, validation: float = 0.05, fraction: float = 1.0) -> datasets.DatasetDict:
    """Train/validation split holding out whole packages, keeping `fraction` of each side's documents.

    Packages are visited in a fixed hash order and go to validation while they fit in `validation` of
    the bytes, so the held-out share is close to `validation` whatever the package sizes, and no package,
    vendored copy or sibling module appears on both sides. A corpus without a `package` column (the
    stdlib sample, a user's files) is split by document (`corpus.split`).
    """
    if "package" not in ds.column_names:
        return corpus.split(ds, validation=validation, fraction=fraction)
    if not 0 < validation < 1:
        raise ValueError(f"validation share must be in (0, 1), got {validation}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    sizes: Counter = Counter()
    for package, size in zip(ds["package"], ds["bytes"], strict=True):
        sizes[package] += size
    budget, held = validation * sum(sizes.values()), set()
    for package in sorted(sizes, key=lambda p: (_rank(p), p)):
        if sizes[package] <= budget:
            held.add(package)
            budget -= sizes[package]
    side = {"train": [], "validation": []}
    for i, (package, path) in enumerate(zip(ds["package"], ds["path"], strict=True)):
        if _rank(path) < fraction:
            side["validation" if package in held else "train"].append(i)
    if not side["validation"]:
        raise ValueError(f"no package fits in the validation share: {validation:.0%} of {sum(sizes.values())} bytes, "
                         f"the smallest of the {len(sizes)} packages has {min(sizes.values())}; use more packages "
                         "or a larger share")
    if not side["train"]:
        raise ValueError(f"package split of {len(ds)} documents left no training documents; use a larger fraction")
    return datasets.DatasetDict({name: ds.select(idx) for name, idx in side.items()})


def for_profile(profile) -> datasets.Dataset:
    """The profile's corpus: `corpus.load()` (stdlib) or `environment()`, by `profile.data.corpus`."""
    name = profile.data.corpus
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r} in profile {profile.name!r}; valid: {', '.join(CORPORA)}")
    if name == "environment":
        return environment()
    return corpus.load()
