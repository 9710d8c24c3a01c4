"""Where one HTTP/1.1 request ends in the bytes a client has sent so far.

The worker reads whatever a connection has delivered without waiting for more,
and hands a request to gunicorn's parser (and the app) only once every byte
of it is in: a client that sends slowly then costs a buffer, never a worker.
:class:`RequestFramer` answers the one question that needs: is the first
request in this buffer whole yet, and how long is it? It reads just what
framing needs (the end of the header block, ``Content-Length``,
``Transfer-Encoding`` and the chunk sizes of a chunked body) and leaves
everything else to gunicorn's parser, which sees the request exactly as it
was sent.

Framing it cannot be sure of (two lengths, a length and a coding, a coding
other than chunked) is not guessed at: the head alone goes to gunicorn,
which refuses it, and the connection ends, so what follows is never read
as a request. A malformed chunked body is refused here, as a 400, and a body
over the limit as a 413: both are :class:`~app.errors.Malformed`.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import BodyTooLarge, Malformed, MalformedChunks

__all__ = ["Framed", "Malformed", "RequestFramer"]

HEAD_END = b"\r\n\r\n"
CRLF = b"\r\n"
HEX = frozenset(b"0123456789abcdefABCDEF")
#: longest chunk-size line (size and extensions) accepted
MAX_CHUNK_LINE = 4096
#: most hex digits in a chunk size: 16 already says more than any body limit
MAX_SIZE_DIGITS = 16


@dataclass(frozen=True)
class Framed:
    """The first request in a buffer: its first ``length`` bytes. With
    ``close``, the connection must end after the answer, because where the
    next request would start is not certain."""

    length: int
    close: bool = False


class RequestFramer:
    """Incremental framing of one request at a time over a growing buffer.

    :meth:`feed` is called each time bytes arrive, with the whole buffer;
    work already done (the search for the end of the head, the chunks seen)
    is kept, so a client that sends a byte at a time costs a few operations
    per byte, not a rescan of everything it sent.
    """

    __slots__ = ("max_head", "max_body", "searched", "head_end", "body_end", "chunks",
                 "expects_continue")

    def __init__(self, max_head: int, max_body: int) -> None:
        self.max_head = max_head
        self.max_body = max_body
        self.reset()

    def reset(self) -> None:
        """Start on the next request (the buffer now begins with it)."""
        self.searched = 0
        self.head_end = -1
        self.body_end = -1
        self.chunks: _Chunks | None = None
        self.expects_continue = False

    @property
    def in_body(self) -> bool:
        """Whether the head is complete and the body is still arriving."""
        return self.head_end >= 0

    def body_received(self, buffered: int) -> int:
        return max(0, buffered - self.head_end) if self.head_end >= 0 else 0

    def feed(self, buf: bytes | bytearray) -> Framed | None:
        """The first request of ``buf`` if it is whole, else None.

        Raises :class:`Malformed` for a request that can never be whole."""
        if self.head_end < 0:
            end = buf.find(HEAD_END, max(0, self.searched - 3))
            if end < 0:
                self.searched = len(buf)
                if len(buf) > self.max_head:
                    # Too long to be a head: gunicorn's parser says why (431, 414).
                    return Framed(len(buf), close=True)
                return None
            self.head_end = end + 4
            framed = self._frame_head(bytes(buf[:self.head_end]))
            if framed is not None:
                return framed
        if self.chunks is not None:
            end = self.chunks.scan(buf)
            return None if end is None else Framed(end)
        return Framed(self.body_end) if len(buf) >= self.body_end else None

    def _frame_head(self, head: bytes) -> Framed | None:
        lengths, codings = [], []
        for line in head.split(CRLF)[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                continue
            name = name.lower()
            if name == b"content-length":
                lengths.append(value.strip(b" \t"))
            elif name == b"transfer-encoding":
                codings.extend(c.strip(b" \t").lower() for c in value.split(b","))
            elif name == b"expect":
                self.expects_continue = value.strip(b" \t").lower() == b"100-continue"
        if codings:
            if lengths or codings[-1] != b"chunked" or codings.count(b"chunked") > 1:
                return Framed(self.head_end, close=True)  # gunicorn refuses it
            self.chunks = _Chunks(self.head_end, self.max_body)
            return None
        if len(lengths) > 1 or (lengths and not lengths[0].isdigit()):
            return Framed(self.head_end, close=True)
        length = int(lengths[0]) if lengths else 0
        if length > self.max_body:
            raise BodyTooLarge(length, self.max_body)
        self.body_end = self.head_end + length
        return None


class _Chunks:
    """Where a chunked body ends (RFC 9112 section 7.1), checked as strictly
    as gunicorn's own reader checks it, so the two always agree."""

    __slots__ = ("pos", "data_end", "total", "max_body", "trailers")

    def __init__(self, start: int, max_body: int) -> None:
        self.pos = start        # where the next chunk-size (or trailer) line starts
        self.data_end = -1      # end of the current chunk's data, once its size is read
        self.total = 0
        self.max_body = max_body
        self.trailers = False

    def scan(self, buf: bytes | bytearray) -> int | None:
        while True:
            if self.data_end >= 0:
                if len(buf) < self.data_end + 2:
                    return None
                if buf[self.data_end:self.data_end + 2] != CRLF:
                    raise MalformedChunks("a chunk is longer than its size says")
                self.pos, self.data_end = self.data_end + 2, -1
            eol = buf.find(CRLF, self.pos)
            if eol < 0:
                if len(buf) - self.pos > MAX_CHUNK_LINE:
                    raise MalformedChunks(f"a chunk-size line longer than {MAX_CHUNK_LINE} "
                                          "bytes")
                return None
            line = bytes(buf[self.pos:eol])
            if self.trailers:
                if not line:
                    return eol + 2  # the empty line after the trailers: the end
                self.pos = eol + 2  # a trailer field; gunicorn's parser checks it
                continue
            size = _chunk_size(line)
            self.total += size
            if self.total > self.max_body:
                raise BodyTooLarge(None, self.max_body)
            if size == 0:
                self.trailers, self.pos = True, eol + 2
            else:
                self.data_end = eol + 2 + size


def _chunk_size(line: bytes) -> int:
    """The size in a chunk-size line: hex digits, then optional extensions
    (with optional whitespace before the ``;``), nothing else."""
    size, semicolon, _ = line.partition(b";")
    if semicolon:
        size = size.rstrip(b" \t")
    if not size or len(size) > MAX_SIZE_DIGITS or not HEX.issuperset(size):
        shown = line[:40].decode("latin-1")
        raise MalformedChunks(f"bad chunk size {shown!r}")
    return int(size, 16)
