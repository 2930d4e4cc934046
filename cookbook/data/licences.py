"""Which licence covers each package of the environment corpus, read from the installed metadata.

A model trained on other people's code is data derived from it, so the shipped reference model trains only on
packages whose licence is permissive (PSF, MIT, BSD, Apache-2.0, ISC …). The licence comes from the
distribution's metadata: PEP 639's `License-Expression` first, then the trove classifiers, then the free-text
`License` field; a package whose distribution or licence cannot be read is treated as not permissive.
Shown in the reference model's receipt (`cookbook/models/reference_files/RECEIPT.md`).
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
from collections import Counter

import datasets

__all__ = ["PERMISSIVE", "is_permissive", "licence", "permissive_only"]

# SPDX ids (and the classifier words that name them) accepted as permissive; anything copyleft is not
PERMISSIVE = ("0BSD", "APACHE", "BSD", "BSL-1.0", "CC0", "CNRI-PYTHON", "HPND", "ISC", "MIT", "PSF", "PYTHON-2.0",
              "UNLICENSE", "ZLIB")
_COPYLEFT = re.compile(r"GPL|MPL|EPL|CDDL|EUPL|OSL|CC-BY-SA|PROPRIETARY|COMMERCIAL", re.IGNORECASE)
_CLASSIFIER = {  # trove classifier -> SPDX-like id
    "MIT License": "MIT", "BSD License": "BSD", "Apache Software License": "Apache-2.0",
    "Python Software Foundation License": "PSF-2.0", "ISC License (ISCL)": "ISC", "The Unlicense (Unlicense)":
    "Unlicense", "zlib/libpng License": "Zlib", "Historical Permission Notice and Disclaimer (HPND)": "HPND",
    "MIT No Attribution License (MIT-0)": "MIT-0", "Boost Software License 1.0 (BSL-1.0)": "BSL-1.0",
}


def is_permissive(expression: str | None) -> bool:
    """True when an SPDX-style expression allows reuse without copyleft: every part of some `OR` alternative
    is permissive (`MIT OR GPL-2.0` is; `MIT AND GPL-2.0` is not); None or an unknown licence is not."""
    if not expression:
        return False
    for alternative in re.split(r"\s+OR\s+", expression.replace("(", " ").replace(")", " ").strip()):
        parts = [p.strip() for p in re.split(r"\s+AND\s+", alternative) if p.strip()]
        if parts and all(not _COPYLEFT.search(p) and p.upper().startswith(PERMISSIVE) for p in parts):
            return True
    return False


@functools.cache
def _distributions() -> dict[str, list[str]]:
    """{top-level import name: [distributions providing it]}, read once per process.

    `packages_distributions()` reads each distribution's `top_level.txt`; from Python 3.11 it also infers the
    names from the installed files of a distribution that has none (numpy 2's meson wheels, for one). Python
    3.10 does not, so that inference is done here for every Python: same result everywhere."""
    found = {name: list(dists) for name, dists in importlib.metadata.packages_distributions().items()}
    for dist in importlib.metadata.distributions():
        if dist.read_text("top_level.txt") is not None or not dist.metadata["Name"]:
            continue  # listed by packages_distributions() already
        names = {f.parts[0] if len(f.parts) > 1 else f.stem for f in dist.files or () if f.suffix == ".py"}
        for name in sorted(n for n in names if "." not in n):  # not ../bin paths
            if dist.metadata["Name"] not in found.setdefault(name, []):
                found[name].append(dist.metadata["Name"])
    return found


def _from_metadata(dist: str) -> str | None:
    meta = importlib.metadata.metadata(dist)
    if meta.get("License-Expression"):
        return meta["License-Expression"].strip()
    named = [_CLASSIFIER.get(c.split(" :: ")[-1], c.split(" :: ")[-1])
             for c in meta.get_all("Classifier") or [] if c.startswith("License :: ")]
    named = [n for n in named if n not in ("OSI Approved", "Other/Proprietary License")] or named
    if named:
        return " OR ".join(dict.fromkeys(named))  # several classifiers: the authors offer each
    text = (meta.get("License") or "").strip().splitlines()
    return text[0][:80] if text and text[0] and text[0] != "UNKNOWN" else None


def licence(package: str) -> tuple[str | None, str | None]:
    """(distribution, licence expression) of a corpus package label (`stdlib/json`, `site-packages/torch`).

    The standard library is the PSF's; a module no installed distribution claims gives (None, None).
    """
    root, _, top = package.partition("/")
    if root == "stdlib":
        return "Python", "PSF-2.0"
    dists = _distributions().get(top)
    if not dists:
        return None, None
    dist = sorted(dists)[0]
    return dist, _from_metadata(dist)


def permissive_only(ds: datasets.Dataset) -> tuple[datasets.Dataset, list[dict]]:
    """The documents of `ds` (with a `package` column) whose package licence is permissive, and one row per
    package: package, distribution, licence, documents, kept."""
    docs = Counter(ds["package"])
    table = []
    for package in sorted(docs):
        dist, expression = licence(package)
        table.append(dict(package=package, distribution=dist, licence=expression, documents=docs[package],
                          kept=is_permissive(expression)))
    kept = {row["package"] for row in table if row["kept"]}
    return ds.filter(lambda batch: [p in kept for p in batch["package"]], batched=True), table
