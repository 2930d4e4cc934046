"""data.licences: which corpus packages the reference model may train on, from the installed metadata."""

import importlib.metadata

import datasets
import pytest

from cookbook.data import licences


@pytest.mark.parametrize("expression, expected", [
    ("MIT", True), ("BSD-3-Clause", True), ("Apache-2.0", True), ("PSF-2.0", True), ("ISC", True),
    ("Apache Software License", True),  # a free-text License field
    ("BSD-3-Clause AND 0BSD AND MIT AND Zlib AND CC0-1.0", True),  # numpy's: every part permissive
    ("MPL-2.0 AND MIT", False),  # tqdm's: the MPL part binds
    ("MIT OR GPL-2.0-only", True), ("(Apache-2.0 OR MIT) AND BSD-2-Clause", True),
    ("GPL-3.0-or-later", False), ("LGPL-2.1-only", False), ("GNU Library or Lesser General Public License (LGPL)", False),
    ("Mozilla Public License 2.0 (MPL 2.0)", False), ("Proprietary", False), ("Copyright (c) 2017 Somebody", False),
    ("", False), (None, False),
])
def test_permissive_expressions(expression, expected):
    assert licences.is_permissive(expression) is expected


def test_stdlib_is_psf_and_an_unclaimed_module_is_unknown():
    assert licences.licence("stdlib/json") == ("Python", "PSF-2.0")
    assert licences.licence("site-packages/no_such_module_xyz") == (None, None)


def test_installed_distribution_read_from_its_metadata():
    dist, expression = licences.licence("site-packages/numpy")
    meta = importlib.metadata.metadata("numpy")
    if meta.get("License-Expression"):  # PEP 639's field first (numpy >= 2.3 writes it)
        assert dist == "numpy" and expression == meta["License-Expression"].strip()
    else:  # older numpy (Python 3.10's pin) says it only by classifier: License :: OSI Approved :: BSD License
        assert "License :: OSI Approved :: BSD License" in meta.get_all("Classifier")
        assert dist == "numpy" and expression == "BSD"
    assert licences.is_permissive(expression)


def test_permissive_only_keeps_documents_of_permissive_packages_and_reports_each_package():
    ds = datasets.Dataset.from_dict({
        "package": ["stdlib/json", "site-packages/numpy", "site-packages/no_such_module_xyz", "stdlib/json"],
        "text": ["a", "b", "c", "d"]})
    kept, table = licences.permissive_only(ds)
    assert kept["text"] == ["a", "b", "d"]
    assert [(r["package"], r["documents"], r["kept"]) for r in table] == [
        ("site-packages/no_such_module_xyz", 1, False), ("site-packages/numpy", 1, True), ("stdlib/json", 2, True)]
