import hashlib
import hmac
import json
import threading

import pytest

from cookbook import deploy


def test_fingerprints_match_hashlib_and_hmac():
    text = "def add(a, b): ünïcode"
    assert deploy.fingerprint(text) == "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()
    key = b"secret"
    assert deploy.fingerprint(text, key) == "hmac-sha256:" + hmac.new(key, text.encode(), "sha256").hexdigest()
    assert deploy.fingerprint("") == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    with pytest.raises(TypeError, match="takes a str, got bytes"):
        deploy.fingerprint(b"x")


def test_lines_hold_fingerprints_not_text_unless_configured(tmp_path):
    log = deploy.AuditLog(tmp_path / "a.jsonl")
    log.write(request_id="r1", status="OK", prompt="secret prompt", output="secret output", latency_ms=1.5)
    text = (tmp_path / "a.jsonl").read_text()
    assert "secret" not in text
    [line] = [json.loads(x) for x in text.splitlines()]
    assert set(line) == {"ts", "request_id", "status", "prompt_sha256", "output_sha256", "latency_ms"}
    assert line["ts"].endswith("+00:00")  # UTC

    raw = deploy.AuditLog(tmp_path / "raw.jsonl", raw=True)
    raw.write(request_id="r2", status="OK", prompt="p", output="o")
    frame = deploy.read_audit(tmp_path / "raw.jsonl")
    assert (frame.loc[0, "prompt"], frame.loc[0, "output"]) == ("p", "o")
    assert str(frame["ts"].dt.tz) == "UTC"


def test_concurrent_writers_never_interleave(tmp_path):
    log = deploy.AuditLog(tmp_path / "a.jsonl")

    def write(worker):
        for i in range(50):
            log.write(request_id=f"{worker}-{i}", status="OK", prompt="x" * 2000, output=str(i))

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    frame = deploy.read_audit(tmp_path / "a.jsonl")  # every line parses
    assert len(frame) == 200 and frame["request_id"].is_unique


def test_a_new_log_exists_and_reads_as_empty(tmp_path):
    # a replica that has answered nothing (no nginx in front: all traffic went to the other one) has an empty log
    log = deploy.AuditLog(tmp_path / "sub" / "idle.jsonl")
    assert log.path.exists() and log.path.read_text() == ""
    assert len(deploy.read_audit(log.path)) == 0
    log.write(request_id="a", status="OK", prompt="p", output="o")
    assert deploy.AuditLog(log.path).path.read_text().count("\n") == 1  # reopening appends, never truncates
