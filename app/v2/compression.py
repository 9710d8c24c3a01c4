"""HTTP content codings for request and response bodies (gzip, deflate).

tritonclient compresses requests with ``Content-Encoding`` and asks for
compressed responses with ``Accept-Encoding``. A compressed request is never
inflated past the body limit: a zip bomb is a 413, not a dead worker.
"""
from __future__ import annotations

import zlib

from ..errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

#: zlib window bits: gzip framing, or zlib framing (what HTTP calls deflate)
WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
#: responses smaller than this go out as they are: compressing costs more than it saves
MIN_SIZE = 1024
LEVEL = 1


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    coding = (encoding or "identity").strip().lower()
    if coding == "identity":
        return body
    if coding not in WBITS:
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported; "
                                   "use gzip or deflate")
    inflater = zlib.decompressobj(WBITS[coding])
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as e:
        raise BadRequest(f"the body is not valid {coding} data: {e}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"the {coding} body inflates past the limit of {limit} bytes "
                              "(DEPOT_MAX_BODY_BYTES)")
    if not inflater.eof:
        raise BadRequest(f"the {coding} body is cut short")
    return out


def accepted(accept_encoding: str | None) -> str | None:
    """The coding to answer with: gzip, else deflate, if the client takes it."""
    offered = {}
    for item in (accept_encoding or "").lower().split(","):
        coding, _, params = item.strip().partition(";")
        q = params.strip().removeprefix("q=")
        try:
            offered[coding.strip()] = float(q) if params else 1.0
        except ValueError:
            offered[coding.strip()] = 0.0
    return next((c for c in ("gzip", "deflate") if offered.get(c, 0) > 0), None)


def compress(body: bytes, coding: str) -> bytes:
    deflater = zlib.compressobj(LEVEL, zlib.DEFLATED, WBITS[coding])
    return deflater.compress(body) + deflater.flush()
