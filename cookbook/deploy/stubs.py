"""Regenerate the committed gRPC stubs from `model_service.proto`: `python -m cookbook.deploy.stubs`.

The stubs are protoc's output (`python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=.
cookbook/deploy/model_service.proto`, run from the repository root) with one first line added, `# ruff: noqa`,
because generated code does not follow our lint rules. Needs `grpcio-tools` (the `dev` extra); serving does not.
tests/deploy/test_proto.py regenerates them into a temporary folder and fails when the committed ones differ.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

__all__ = ["HEADER", "PROTO", "STUBS", "generate"]

PROTO = Path(__file__).with_name("model_service.proto")
STUBS = ("model_service_pb2.py", "model_service_pb2_grpc.py")
HEADER = "# ruff: noqa\n"
_ROOT = PROTO.parents[2]  # the folder holding the `cookbook` package: imports in the stubs start there


def generate(out: str | Path | None = None) -> dict[str, str]:
    """{file name: text} of freshly generated stubs; written next to the .proto (or into `out`) when asked."""
    try:  # optional (dev extra): only regenerating the stubs needs protoc
        from grpc_tools import protoc
    except ImportError:
        raise ImportError('regenerating the stubs needs grpcio-tools: pip install "cookbook[dev]"') from None
    import importlib.resources

    include = str(importlib.resources.files("grpc_tools") / "_proto")  # google/protobuf/*.proto
    relative = PROTO.relative_to(_ROOT).as_posix()
    with tempfile.TemporaryDirectory() as tmp:
        code = protoc.main(["protoc", f"-I{_ROOT}", f"-I{include}", f"--python_out={tmp}",
                            f"--grpc_python_out={tmp}", str(_ROOT / relative)])
        if code != 0:
            raise RuntimeError(f"protoc failed with exit code {code} on {relative}")
        folder = Path(tmp) / Path(relative).parent
        texts = {name: HEADER + (folder / name).read_text() for name in STUBS}
    if out is not None:
        for name, text in texts.items():
            (Path(out) / name).write_text(text)
    return texts


if __name__ == "__main__":
    generate(PROTO.parent)
    print(f"wrote {', '.join(STUBS)} next to {PROTO.name}")
