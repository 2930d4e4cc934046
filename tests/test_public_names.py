"""Every public function and class of the package is named in at least one test (issue 30).

Public: a module's `__all__`, or, without one, its functions and classes that do not start with "_". Result
dataclasses and exceptions are left out (they are checked through the functions that return or raise them).
"""

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import cookbook

TESTS = Path(__file__).resolve().parent
GENERATED = ("_pb2", "_pb2_grpc", "__main__")  # protoc's stubs (tests/deploy/test_proto.py) and entry points


def _public(module):
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in vars(module) if not n.startswith("_")]
    for name in names:
        value = getattr(module, name, None)
        if not (inspect.isfunction(value) or inspect.isclass(value)) or value.__module__ != module.__name__:
            continue  # constants, and names a module re-exports from where they are defined
        if inspect.isclass(value) and (hasattr(value, "__dataclass_fields__") or issubclass(value, BaseException)):
            continue
        yield name


def test_every_public_function_and_class_is_named_in_a_test():
    text = "\n".join(p.read_text() for p in TESTS.rglob("*.py") if p.name != Path(__file__).name)
    unnamed = []
    for info in pkgutil.walk_packages(cookbook.__path__, "cookbook."):
        if info.name.endswith(GENERATED):
            continue
        module = importlib.import_module(info.name)
        unnamed += [f"{info.name}.{n}" for n in _public(module) if not re.search(rf"\b{re.escape(n)}\b", text)]
    assert unnamed == [], f"public names no test names: {unnamed}"
