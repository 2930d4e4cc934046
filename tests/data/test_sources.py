import dataclasses
import random
import string

import pytest
from datasets import Dataset

from cookbook import profiles
from cookbook.data import corpus, sources


def code(seed: int, lines: int = 60) -> str:
    """A distinct, plausible Python file: random names, so two seeds share almost no 5-token shingles."""
    rng = random.Random(seed)
    name = lambda: "".join(rng.choices(string.ascii_lowercase, k=8))  # noqa: E731
    return "".join(f"def {name()}({name()}, {name()}):\n    return {name()} + {rng.randint(0, 999)}\n"
                   for _ in range(lines // 2))


@pytest.fixture
def fake_env(tmp_path, monkeypatch):
    """A tiny interpreter: a stdlib and a site-packages folder with one file for every rule."""
    stdlib, site = tmp_path / "lib" / "python3", tmp_path / "site-packages"
    base = code(0, 200)
    files = {
        stdlib / "os.py": code(1),
        stdlib / "email" / "__init__.py": code(2),
        stdlib / "email" / "parser.py": code(3),
        stdlib / "test" / "test_os.py": code(4),  # tests are left out ...
        stdlib / "idlelib" / "idle_test" / "mock.py": code(5),
        stdlib / "site-packages" / "inside.py": code(6),  # ... and so is third-party code under the stdlib
        site / "alpha" / "core.py": base,
        site / "alpha" / "tests" / "test_core.py": code(7),
        site / "alpha" / "conftest.py": code(8),
        site / "alpha" / "core_test.py": code(9),
        site / "beta" / "copy_of_core.py": base.replace("\n", "\n\n"),  # exact duplicate after normalisation
        site / "gamma" / "edited_core.py": base.replace("return", "yield", 1),  # near duplicate
        site / "gamma" / "own.py": code(10),
        site / "delta.py": code(11),
        site / "empty" / "__init__.py": "\n\n",
        site / "big.py": "x = 1  # padding\n" * 70_000,  # 1.2 MB
        site / "longline.py": "x = '" + "a" * 1200 + "'\n" + code(12),
        site / "wide.py": ("y = [" + ", ".join(["1"] * 40) + "]\n") * 30,  # mean line ~125 characters
        site / "table.py": "(\n" + "  {},\n" * 3000 + ")\n",  # braces, not code
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (site / "latin1.py").write_bytes("# caf\xe9\n".encode("latin-1") + code(13).encode())
    monkeypatch.setattr(sources, "_roots", lambda: [("stdlib", stdlib), ("site-packages", site)])
    return stdlib, site


def test_environment_files_leave_out_tests_and_name_the_top_level_package(fake_env):
    found = {path: package for path, package, _ in sources.environment_files()}
    assert "stdlib/os.py" in found and found["stdlib/os.py"] == "stdlib/os"
    assert found["stdlib/email/parser.py"] == "stdlib/email"
    assert found["site-packages/alpha/core.py"] == "site-packages/alpha"
    assert found["site-packages/delta.py"] == "site-packages/delta"
    assert not [p for p in found if "test" in p or "conftest" in p or "inside" in p]
    assert list(found) == sorted(found)


def test_environment_filters_and_deduplicates_with_counts(fake_env, capsys):
    ds = sources.environment(workers=1)
    printed = capsys.readouterr().out
    stats = sources.report()
    assert stats["filtered"] == {"not UTF-8": 1, "empty": 1, "over 1 MB": 1, "a line over 1000 characters": 1,
                                 "mean line over 100 characters": 1, "under 25% alphanumeric": 1}
    assert (stats["exact_removed"], stats["near_removed"], stats["near_clusters"]) == (1, 1, 1)
    # The first copy in path order is kept; its exact and near copies are gone.
    kept = set(ds["path"])
    assert "site-packages/alpha/core.py" in kept
    assert not kept & {"site-packages/beta/copy_of_core.py", "site-packages/gamma/edited_core.py"}
    assert kept == {"stdlib/os.py", "stdlib/email/__init__.py", "stdlib/email/parser.py",
                    "site-packages/alpha/core.py", "site-packages/gamma/own.py", "site-packages/delta.py"}
    assert stats["files"] == 3 + 11 and stats["documents"] == len(ds) == 6  # 6 filtered, 2 duplicates
    assert ds.column_names == ["path", "package", "text", "bytes", "lines"]
    assert stats["fingerprint"] == corpus.fingerprint(ds)
    assert "1 exact duplicates removed" in printed and "6 documents" in printed


def test_environment_is_cached_and_rebuilt_when_the_environment_changes(fake_env, monkeypatch):
    first = sources.environment(workers=1, verbose=False)

    def no_build(*args, **kwargs):
        raise AssertionError("rebuilt although the environment did not change")

    with monkeypatch.context() as m:
        m.setattr(sources, "_build", no_build)
        again = sources.environment(workers=1)
    assert corpus.fingerprint(again) == corpus.fingerprint(first) and again["text"] == first["text"]
    (fake_env[1] / "epsilon.py").write_text(code(20))  # a newly installed package
    grown = sources.environment(workers=1, verbose=False)
    assert "site-packages/epsilon.py" in grown["path"] and len(grown) == len(first) + 1


def test_parallel_build_equals_the_serial_one(fake_env):
    serial = sources.environment(workers=1, verbose=False)
    parallel = sources.environment(workers=2, verbose=False, rebuild=True)
    assert parallel.to_dict() == serial.to_dict()
    assert sources.report()["workers"] == 2


def test_environment_rejects_bad_workers(fake_env):
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="workers"):
            sources.environment(workers=bad)


def package_corpus(sizes: dict[str, list[int]]) -> Dataset:
    rows = [(f"{pkg}/m{i}.py", pkg, "x" * n, n) for pkg, docs in sizes.items() for i, n in enumerate(docs)]
    return Dataset.from_dict({k: [r[j] for r in rows] for j, k in enumerate(["path", "package", "text", "bytes"])})


SIZES = {f"pkg{i:02d}": [50 * (i % 7 + 1)] * (i % 3 + 1) for i in range(40)} | {"huge": [40_000]}


def test_package_split_holds_out_whole_packages_close_to_the_share():
    ds = package_corpus(SIZES)
    parts = sources.split(ds, validation=0.1)
    train, val = set(parts["train"]["package"]), set(parts["validation"]["package"])
    assert not train & val and train | val == set(SIZES)
    total = sum(sum(d) for d in SIZES.values())
    held = sum(parts["validation"]["bytes"])
    assert held <= 0.1 * total
    # Greedy and maximal: every package left in train is bigger than the room validation still had.
    room = 0.1 * total - held
    assert all(sum(SIZES[p]) > room for p in train)
    assert "huge" in train  # a package larger than the whole share is never held out
    assert len(parts["train"]) + len(parts["validation"]) == len(ds)


def test_package_split_is_deterministic_and_independent_of_order():
    ds = package_corpus(SIZES)
    a = sources.split(ds, validation=0.1)
    b = sources.split(ds.shuffle(seed=3), validation=0.1)
    assert set(a["validation"]["path"]) == set(b["validation"]["path"])
    quarter = sources.split(ds, validation=0.1, fraction=0.25)
    assert set(quarter["validation"]["path"]) <= set(a["validation"]["path"])
    assert set(quarter["train"]["path"]) <= set(a["train"]["path"])
    assert 0.1 < len(quarter["train"]) / len(a["train"]) < 0.45


def test_split_without_packages_is_the_document_split_and_bad_input_is_named():
    stdlib = corpus.load()
    ours, theirs = sources.split(stdlib, fraction=0.2), corpus.split(stdlib, fraction=0.2)
    assert ours["validation"]["path"] == theirs["validation"]["path"]
    with pytest.raises(ValueError, match="no package fits in the validation share: 5% of 60 bytes, the smallest of "
                                         "the 2 packages has 20"):
        sources.split(package_corpus({"only": [10, 30], "other": [20]}))
    with pytest.raises(ValueError, match="validation share"):
        sources.split(package_corpus(SIZES), validation=1.5)
    with pytest.raises(ValueError, match="fraction"):
        sources.split(package_corpus(SIZES), fraction=0)


def test_for_profile_picks_the_profiles_corpus(monkeypatch):
    smoke = profiles.PROFILES["smoke"]
    assert corpus.fingerprint(sources.for_profile(smoke)) == corpus.fingerprint(corpus.load())
    env_corpus = package_corpus({"a": [10], "b": [20]})
    monkeypatch.setattr(sources, "environment", lambda **kwargs: env_corpus)
    assert sources.for_profile(profiles.PROFILES["full"]) is env_corpus
    odd = dataclasses.replace(smoke, data=dataclasses.replace(smoke.data, corpus="wikipedia"))
    with pytest.raises(ValueError, match="'wikipedia'.*valid: stdlib, environment"):
        sources.for_profile(odd)


@pytest.mark.slow
def test_real_environment_lists_stdlib_and_installed_packages_without_tests():
    files = sources.environment_files()
    packages = {package for _, package, _ in files}
    assert "stdlib/json" in packages and "site-packages/torch" in packages and "site-packages/datasets" in packages
    assert not [p for p, _, _ in files if "/tests/" in p or "/test/" in p or p.rsplit("/", 1)[-1].startswith("test_")]
    assert sum(f.stat().st_size for _, _, f in files) > 50e6  # tens of MB at least: far more than the stdlib
