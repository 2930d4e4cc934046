"""The three ways to install (pyproject ranges, tested pins, conda) must agree with each other."""

import re
import sys
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
CONDA_TO_PIP = {"pytorch": "torch"}


def _pyproject_requirements() -> dict[str, SpecifierSet]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return {Requirement(r).name.lower(): Requirement(r).specifier for r in reqs if Requirement(r).marker is None}


def test_environment_yml_agrees_with_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    ranges = _pyproject_requirements()
    conda = [d for d in env["dependencies"] if isinstance(d, str) and d not in ("pip",)]
    python = [d for d in conda if d.startswith("python")]
    assert python and SpecifierSet(python[0][len("python"):]).contains("3.11")
    checked = 0
    for dep in conda:
        name, spec = re.match(r"([A-Za-z0-9_.-]+)\s*(.*)", dep).groups()
        if name == "python":
            continue
        pip_name = CONDA_TO_PIP.get(name, name).lower()
        assert pip_name in ranges, f"environment.yml names {name}, which pyproject.toml does not"
        assert SpecifierSet(spec.replace(" ", "")) == ranges[pip_name], f"{name}: {spec} vs pyproject {ranges[pip_name]}"
        checked += 1
    assert checked >= 10
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert any(line.startswith("-e .[dev") for line in pip_section)


def test_constraints_pin_versions_inside_the_ranges():
    ranges = _pyproject_requirements()
    pins = {}
    for line in (ROOT / "requirements" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            req = Requirement(line)
            pins[req.name.lower().replace("_", "-")] = next(iter(req.specifier)).version
    assert pins["torch"] == "2.13.0"  # the CPU build on local disk; an unpinned torch pulls multi-GB CUDA wheels
    for name, spec in ranges.items():
        key = name.replace("_", "-")
        if key in pins:
            assert spec.contains(pins[key]), f"pinned {key}=={pins[key]} is outside pyproject's {spec}"
