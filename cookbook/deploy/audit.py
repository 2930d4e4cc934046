"""An audit log of every request as JSON lines: who asked what, when, and what came back — as fingerprints.

GDPR-minded by default: a line holds SHA-256 fingerprints of the prompt and of the output, never their text,
so the log proves *which* text was processed (hash the text you have and compare) without storing personal
data. The raw text goes in only when `raw=True` is configured. A short text has few candidates and can be
guessed from an unkeyed hash; pass a secret `key` for keyed fingerprints (HMAC-SHA256) instead.

    log = AuditLog("audit.jsonl")
    log.write(request_id="…", status="OK", prompt="def f(", output="x):", latency_ms=12.5)
    read_audit("audit.jsonl")   # a DataFrame, one row per request
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import threading
from pathlib import Path

import pandas as pd

__all__ = ["AuditLog", "fingerprint", "read_audit"]


def fingerprint(text: str, key: bytes | None = None) -> str:
    """`sha256:<hex>` of `text` (UTF-8), or `hmac-sha256:<hex>` keyed with `key`. Shown in notebooks/12 §6."""
    if not isinstance(text, str):
        raise TypeError(f"fingerprint takes a str, got {type(text).__name__}")
    if key is None:
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    return "hmac-sha256:" + hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


class AuditLog:
    """Append-only JSONL audit log, safe to share between the server's threads (one line per `write`, flushed).

    Shown in notebooks/12 §6.
    """

    def __init__(self, path: str | Path, *, raw: bool = False, key: bytes | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()  # a server that has answered nothing has an empty log, not a missing one
        self.raw, self._key = raw, key
        self._lock = threading.Lock()

    def write(self, *, request_id: str, status: str, prompt: str = "", output: str = "", **fields) -> dict:
        """Append one request: UTC timestamp, id, status, fingerprints (and text if `raw`), extra `fields`."""
        line = {"ts": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds"),
                "request_id": request_id, "status": status,
                "prompt_sha256": fingerprint(prompt, self._key), "output_sha256": fingerprint(output, self._key),
                **fields}
        if self.raw:
            line.update(prompt=prompt, output=output)
        text = json.dumps(line, ensure_ascii=False) + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as f:
            f.write(text)
        return line


def read_audit(path: str | Path) -> pd.DataFrame:
    """The audit log as a DataFrame (one row per request, `ts` parsed as UTC). Shown in notebooks/12 §6."""
    lines = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    frame = pd.DataFrame(lines)
    if len(frame):
        frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    return frame
