import pytest
from google.protobuf.descriptor import FieldDescriptor

from cookbook.deploy import model_service_pb2 as pb
from cookbook.deploy import stubs


def test_committed_stubs_are_what_protoc_generates_now():
    pytest.importorskip("grpc_tools", reason="regenerating the stubs needs grpcio-tools (dev extra)")
    fresh = stubs.generate()
    for name, text in fresh.items():
        committed = (stubs.PROTO.parent / name).read_text()
        assert committed == text, f"{name} is stale: run python -m cookbook.deploy.stubs"


def test_the_guides_fields_keep_their_numbers():
    # PredictRequest { string prompt = 1; int32 max_tokens = 2; }: a client built from the guide's .proto still works
    fields = {f.name: (f.number, f.type) for f in pb.PredictRequest.DESCRIPTOR.fields}
    assert fields["prompt"] == (1, FieldDescriptor.TYPE_STRING)
    assert fields["max_tokens"] == (2, FieldDescriptor.TYPE_INT32)
    guide_bytes = b"\x0a\x05hello\x10\x08"  # prompt="hello", max_tokens=8, encoded by hand
    request = pb.PredictRequest.FromString(guide_bytes)
    assert (request.prompt, request.max_tokens, request.temperature) == ("hello", 8, 0.0)

