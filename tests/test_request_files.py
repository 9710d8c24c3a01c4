"""Raw requests kept as files (tests/requests/), each fed whole and byte by
byte to a connection's framing and gunicorn's parser, as the worker feeds
them: what reaches the app, or the error that ends the connection."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.server.connection import Connection
from app.server.framing import Malformed
from standins import CLIENT, SERVER, framer, wsgi_call

REQUESTS = Path(__file__).parent / "requests"
FILES = sorted(REQUESTS.glob("*/*.http"))
#: gunicorn's limits for these files (tests/requests/README.md)
LIMITS = {"limit_request_line": 256, "limit_request_fields": 20}


def load(path: Path) -> bytes:
    """The bytes a request file stands for (gunicorn's convention)."""
    data = path.read_bytes().replace(b"\n", b"").replace(b"\\r\\n", b"\r\n")
    return data.replace(b"\\n", b"\n").replace(b"\\t", b"\t")


def serve(data: bytes, step: int) -> list[dict]:
    """What the worker makes of ``data`` arriving ``step`` bytes at a time."""
    call = wsgi_call(**LIMITS)
    conn = Connection(None, CLIENT, SERVER, framer(call.cfg))  # type: ignore[arg-type]
    seen: list[dict] = []
    for start in range(0, len(data), step):
        conn.inbuf += data[start:start + step]
        while conn.inbuf:
            try:
                framed = conn.frame()
            except Malformed as e:
                return seen + [{"status": e.status, "error": e.message}]
            if framed is None:
                break
            raw, framed = conn.take_request()
            req = call.parse(conn, raw)
            if req is None:  # answered with gunicorn's status, as Depot's JSON
                head, body = bytes(conn.out).split(b"\r\n\r\n", 1)
                return seen + [{"status": int(head.split()[1]),
                                "error": json.loads(body)["error"]}]
            seen.append({"method": req.method, "uri": req.uri,
                         "body": req.body.read().decode("latin-1")})
            if framed.close:
                return seen
    return seen + [{"incomplete": True}] if conn.inbuf else seen


def matches(expected: dict, seen: dict) -> bool:
    if "error" in expected:
        return seen.get("status") == expected["status"] and expected["error"] in seen["error"]
    return seen == expected


@pytest.mark.parametrize("step", [0, 1], ids=["whole", "bytewise"])
@pytest.mark.parametrize("path", FILES, ids=[f"{p.parent.name}/{p.stem}" for p in FILES])
def test_a_request_file_is_served_as_its_json_says(path: Path, step: int) -> None:
    data = load(path)
    expected = json.loads(path.with_suffix(".json").read_text())
    seen = serve(data, step or len(data))
    assert len(seen) == len(expected) and all(map(matches, expected, seen)), seen
    served = all("method" in e for e in expected)
    assert served == (path.parent.name == "valid")
