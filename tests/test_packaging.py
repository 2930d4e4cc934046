"""The ways to install (pyproject ranges, the tested pins of each Python, conda, make) agree with each other."""

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from jupyter_client.kernelspec import KernelSpecManager
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PINS = ROOT / "requirements"
CONDA_TO_PIP = {"pytorch": "torch"}
# The extras that `make install` installs, read from the Makefile (EXTRAS ?= ...)
EXTRAS_INSTALLED = tuple(re.search(r"^EXTRAS \?= (.+)$", (ROOT / "Makefile").read_text(), re.M)[1].split(","))


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirements(extras=None) -> list[Requirement]:
    project = _pyproject()["project"]
    reqs = list(project["dependencies"])
    for extra, deps in project["optional-dependencies"].items():
        if extras is None or extra in extras:
            reqs += deps
    return [Requirement(r) for r in reqs]


def _environment_yml() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def _supported_pythons() -> list[str]:
    """Every 3.x that pyproject's requires-python and environment.yml's python range both admit."""
    requires = SpecifierSet(_pyproject()["project"]["requires-python"])
    conda_python = next(d for d in _environment_yml()["dependencies"] if isinstance(d, str) and d.startswith("python"))
    conda = SpecifierSet(conda_python[len("python"):])
    return [f"3.{minor}" for minor in range(6, 20) if f"3.{minor}" in requires and f"3.{minor}" in conda]


def _pin_file(python: str) -> Path:
    return PINS / f"constraints-py{python.replace('.', '')}.txt"


def _pins(path: Path) -> dict[str, Requirement]:
    pins = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            name = canonicalize_name(req.name)
            assert name not in pins, f"{path.name}:{number}: {req.name} is pinned twice"
            pins[name] = req
    return pins


def _pinned_version(req: Requirement) -> Version:
    (spec,) = req.specifier
    return Version(spec.version)


def _marker_environment(python: str) -> dict[str, str]:
    return {**default_environment(), "python_version": python, "python_full_version": f"{python}.0"}


def test_a_pin_file_for_each_supported_python_and_no_other():
    supported = _supported_pythons()
    assert _pyproject()["tool"]["ruff"]["target-version"] == "py" + supported[0].replace(".", "")
    files = sorted(PINS.glob("constraints-py*.txt"))
    assert [p.name for p in files] == [_pin_file(v).name for v in supported]
    assert not (PINS / "constraints.txt").exists(), "one pins file per Python: constraints.txt is stale"


@pytest.mark.parametrize("python", _supported_pythons())
def test_pins_are_exact_releases_from_the_index(python):
    for name, req in _pins(_pin_file(python)).items():
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{name}: pin one exact version, not {req.specifier}"
        # a local label (torch 2.13.0+cpu from this machine's disk) is not on the package index
        assert _pinned_version(req).local is None, f"{name}=={specs[0].version} in {_pin_file(python).name}"
        assert req.marker is None or req.marker.evaluate(_marker_environment(python)), f"{name}: {req.marker}"


@pytest.mark.parametrize("python", _supported_pythons())
def test_each_dependency_is_pinned_inside_its_range(python):
    pins = _pins(_pin_file(python))
    env = _marker_environment(python)
    installed_by_make = {canonicalize_name(r.name) for r in _requirements(EXTRAS_INSTALLED)}
    checked = 0
    for req in _requirements():
        name = canonicalize_name(req.name)
        if req.marker is not None and not req.marker.evaluate(env):
            assert name not in pins, f"{name} is pinned for Python {python}, where pyproject does not install it"
        elif name in pins:
            version = _pinned_version(pins[name])
            assert req.specifier.contains(version, prereleases=True), (
                f"{_pin_file(python).name} pins {name}=={version}, outside pyproject's {req.specifier}")
            checked += 1
        else:  # only the extras that `make install` leaves out (quant, serve) may float
            assert name not in installed_by_make, f"{name} ({req}) has no pin in {_pin_file(python).name}"
    assert checked >= 20


def test_pins_of_every_python_fit_the_releases_requires_python():
    """A release pinned for Python X must accept X (numpy 2.4 needs 3.11: the bug that stopped 3.10 installs).

    Each release installed here carries its Requires-Python in its metadata, so every pin file is checked
    against it offline; CI runs this on each supported Python, so each pin is checked in at least one run."""
    installed = {}  # name -> (version, Requires-Python) of each distribution installed here
    for dist in importlib.metadata.distributions():
        meta = dist.metadata
        if meta.get("Name"):
            installed[canonicalize_name(meta["Name"])] = (Version(Version(meta["Version"]).public),
                                                          SpecifierSet(meta.get("Requires-Python") or ""))
    checked = 0
    for python in _supported_pythons():
        for name, req in _pins(_pin_file(python)).items():
            version, requires = installed.get(name, (None, None))
            if version != _pinned_version(req):
                continue
            assert python in requires, (  # "3.11" is 3.11.0: pins serve every 3.11 (Debian 12 has 3.11.2)
                f"{_pin_file(python).name} pins {req}, whose Requires-Python is {requires}")
            checked += 1
    assert checked > 0


def _installed_closure(roots: list[Requirement]) -> dict[str, str]:
    """Name -> installed version of every distribution that `roots` pull in here, following Requires-Dist."""
    env = default_environment()
    found, todo, seen = {}, list(roots), set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if (name, frozenset(req.extras)) in seen:
            continue
        seen.add((name, frozenset(req.extras)))
        dist = importlib.metadata.distribution(name)  # PackageNotFoundError: the venv lacks a requirement
        found[name] = dist.version
        for line in dist.requires or []:
            sub = Requirement(line)
            if sub.marker is None or any(sub.marker.evaluate({**env, "extra": e}) for e in ("", *req.extras)):
                todo.append(sub)
    return found


@pytest.mark.skipif(not (Path(sys.prefix) / ".installed-stamp").exists(),
                    reason="not a `make install` venv: only there was every requirement installed from the pins")
def test_everything_make_installs_is_pinned_at_its_installed_version():
    """Nothing floats: a dependency added to pyproject (or pulled in by a new release) without regenerating
    the pins (`make pins`) shows up here, with the versions actually installed."""
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    pins = _pins(_pin_file(python))
    env = _marker_environment(python)
    roots = [r for r in _requirements(EXTRAS_INSTALLED) if r.marker is None or r.marker.evaluate(env)]
    problems = []
    for name, version in sorted(_installed_closure(roots).items()):
        if name not in pins:
            problems.append(f"{name} {version} is installed but not pinned")
        elif Version(Version(version).public) != _pinned_version(pins[name]):
            problems.append(f"{name} {version} is installed, {pins[name]} is pinned")
    assert not problems, f"{_pin_file(python).name}: " + "; ".join(problems)


def test_environment_yml_agrees_with_pyproject():
    env = _environment_yml()
    ranges = {canonicalize_name(r.name): r.specifier for r in _requirements() if r.marker is None}
    conda = [d for d in env["dependencies"] if isinstance(d, str) and d not in ("pip",)]
    checked = 0
    for dep in conda:
        name, spec = re.match(r"([A-Za-z0-9_.-]+)\s*(.*)", dep).groups()
        if name == "python":
            continue
        pip_name = canonicalize_name(CONDA_TO_PIP.get(name, name))
        assert pip_name in ranges, f"environment.yml names {name}, which pyproject.toml does not"
        assert SpecifierSet(spec.replace(" ", "")) == ranges[pip_name], f"{name}: {spec} vs pyproject {ranges[pip_name]}"
        checked += 1
    assert checked >= 10
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert any(line.startswith("-e .[dev") for line in pip_section)


def test_notebooks_name_the_kernel_jupyter_installs():
    """JupyterLab rewrites a notebook's kernelspec on open and marks it unsaved when it differs."""
    spec = KernelSpecManager().get_kernel_spec("python3")
    expected = {"name": "python3", "display_name": spec.display_name, "language": spec.language}
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert json.loads(path.read_text())["metadata"]["kernelspec"] == expected, path.name


needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _make(*args, **env) -> subprocess.CompletedProcess:
    # Drop the variables of a `make` that may be running these tests (`make unit VENV=...`): they would win.
    clean = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "VENV", "PYTHON")}
    return subprocess.run(["make", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=60,
                          env={**clean, **env})


@needs_make
def test_make_replaces_a_half_created_venv_and_says_what_to_do(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)  # as without python3-venv
    no_venv_module = tmp_path / "python3"
    no_venv_module.write_text("#!/bin/sh\necho 'ensurepip is not available' >&2; exit 1\n")
    no_venv_module.chmod(0o755)
    result = _make("install", f"VENV={venv}", f"PYTHON={no_venv_module}")
    assert result.returncode != 0
    assert "has no pip (half-created)" in result.stdout
    assert "apt install python3-venv" in result.stderr
    assert not venv.exists()  # nothing half-made is left behind for the next make


@needs_make
def test_make_names_the_supported_pythons_for_an_unpinned_one(tmp_path):
    python = tmp_path / "python3"
    python.write_text("#!/bin/sh\necho 'Python 3.9.18'\n")
    python.chmod(0o755)
    result = _make("install", f"VENV={tmp_path / 'venv'}", f"PYTHON={python}")
    assert result.returncode != 0
    assert "No tested pins for Python 3.9 " in result.stderr and "3.10-3.13" in result.stderr


@needs_make
def test_make_lab_runs_offline_and_as_root_when_needed():
    result = _make("-n", "-B", "lab", "VENV=/nonexistent/venv", "LAB_ARGS=--port 8890")  # -n: print, run nothing
    lab = next(line for line in result.stdout.splitlines() if "jupyter lab" in line)
    assert "--LabApp.extension_manager=readonly" in lab and lab.endswith("--port 8890 notebooks")
    assert ("--allow-root" in lab) == (os.geteuid() == 0)
    assert '"fetchNews": "false"' in result.stdout
