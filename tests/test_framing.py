"""Framing (app/server/framing.py) in-process: when a buffered request is whole, how
long it is, and which bodies are refused before any app sees them."""
from __future__ import annotations

import pytest

from app.server.framing import Framed, Malformed, RequestFramer

HEAD = b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\n"


def framer(max_body: int = 1 << 20) -> RequestFramer:
    return RequestFramer(max_head=8192, max_body=max_body)


def feed_bytewise(data: bytes, f: RequestFramer | None = None) -> list[Framed | None]:
    """Feed a growing buffer one byte at a time, as a slow client sends it."""
    f = f or framer()
    return [f.feed(data[:i]) for i in range(1, len(data) + 1)]


@pytest.mark.parametrize("request_bytes, length", [
    (b"GET /v2 HTTP/1.1\r\nHost: x\r\n\r\n", None),
    (HEAD + b"Content-Length: 5\r\n\r\nhello", None),
    (HEAD + b"content-length:  0\r\n\r\n", None),
    (HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", None),
    (HEAD + b"Transfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n", None),
    (HEAD + b"Transfer-Encoding: chunked\r\n\r\na \t;e\r\n0123456789\r\n0\r\n\r\n", None),
], ids=["get", "length", "length-0", "chunked", "chunked-ext-trailer", "chunked-bws"])
def test_a_request_is_whole_only_at_its_last_byte(request_bytes: bytes, length: None) -> None:
    seen = feed_bytewise(request_bytes)
    assert seen[:-1] == [None] * (len(request_bytes) - 1)
    assert seen[-1] == Framed(len(request_bytes))


def test_pipelined_requests_are_framed_one_at_a_time() -> None:
    first = HEAD + b"Content-Length: 2\r\n\r\n{}"
    second = b"GET /v2 HTTP/1.1\r\nHost: x\r\n\r\n"
    buf = bytearray(first + second)
    f = framer()
    assert f.feed(buf) == Framed(len(first))
    del buf[:len(first)]
    f.reset()
    assert f.feed(buf) == Framed(len(second))


def test_expect_100_continue_is_noticed_once_the_head_is_in() -> None:
    head = HEAD + b"Expect: 100-continue\r\nContent-Length: 3\r\n\r\n"
    f = framer()
    assert f.feed(head) is None
    assert f.in_body and f.expects_continue
    assert (f.body_received(len(head)), f.body_received(len(head) + 2)) == (0, 2)


@pytest.mark.parametrize("size_line", [b"zz", b"-1", b"0x2", b" 2", b"", b"2 2", b"1" * 17])
def test_bad_chunk_sizes_are_400(size_line: bytes) -> None:
    with pytest.raises(Malformed) as e:
        framer().feed(HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + size_line + b"\r\nab\r\n0\r\n\r\n")
    assert e.value.status == 400 and "chunk size" in e.value.message


def test_a_chunk_longer_than_its_size_is_400() -> None:
    with pytest.raises(Malformed) as e:
        framer().feed(HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n")
    assert (e.value.status, "longer than its size") == (400, "longer than its size")


def test_an_endless_chunk_size_line_is_400() -> None:
    with pytest.raises(Malformed):
        framer().feed(HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + b"1" * 5000)


@pytest.mark.parametrize("body", [
    b"Content-Length: 2000\r\n\r\n",
    b"Transfer-Encoding: chunked\r\n\r\n400\r\n" + b"a" * 1024 + b"\r\n400\r\n",
    b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n",
], ids=["length", "chunks", "huge-chunk"])
def test_bodies_over_the_limit_are_413_before_they_arrive(body: bytes) -> None:
    with pytest.raises(Malformed) as e:
        framer(max_body=1500).feed(HEAD + body)
    assert e.value.status == 413 and "DEPOT_MAX_BODY_BYTES" in e.value.message


@pytest.mark.parametrize("headers", [
    b"Content-Length: 5\r\nContent-Length: 5\r\n",
    b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip\r\n",
    b"Transfer-Encoding: chunked, chunked\r\n",
    b"Content-Length: +5\r\n",
    b"Content-Length: 0x5\r\n",
], ids=["two-lengths", "length-and-chunked", "not-chunked", "chunked-twice", "signed", "hex"])
def test_ambiguous_framing_goes_to_gunicorn_alone_and_ends_the_connection(headers: bytes) -> None:
    """Only the head is handed on (gunicorn refuses it); the bytes after it
    are never read as a request."""
    data = HEAD + headers + b"\r\n"
    assert framer().feed(data + b"hello") == Framed(len(data), close=True)


def test_a_head_that_never_ends_is_handed_on_at_the_limit() -> None:
    f = RequestFramer(max_head=100, max_body=1000)
    assert f.feed(HEAD + b"X: " + b"a" * 10) is None
    assert f.feed(HEAD + b"X: " + b"a" * 200) == Framed(len(HEAD) + 203, close=True)
