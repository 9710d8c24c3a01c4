"""HTTP/1.1 spoken over raw sockets, for tests that need to control every
byte a client sends and see every byte the server answers."""
from __future__ import annotations

import json
import socket
from pathlib import Path

from conftest import Server


def connect(server: Server) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def request(method: str, path: str, body: dict | None = None, headers: str = "",
            version: str = "HTTP/1.1") -> bytes:
    data = json.dumps(body).encode() if body is not None else b""
    head = (f"{method} {path} {version}\r\nHost: depot\r\n{headers}"
            f"Content-Length: {len(data)}\r\nContent-Type: application/json\r\n\r\n")
    return head.encode() + data


def read_response(f) -> tuple[int, dict[str, str], bytes] | None:
    """One response from a socket's file, reading no further than it; None
    when the server ended the connection instead."""
    line = f.readline()
    if not line:
        return None
    status = int(line.split()[1])
    headers = {}
    while (line := f.readline()) not in (b"\r\n", b""):
        name, value = line.decode().split(":", 1)
        headers[name.strip().lower()] = value.strip()
    return status, headers, f.read(int(headers["content-length"]))


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False


def owners(server: Server, client_port: int) -> list[int]:
    """The worker pids holding the server end of the connection from ``client_port``."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote_port = int(fields[2].split(":")[1], 16)
        if remote_port == client_port:
            inodes.add(fields[9])
    found = []
    for pid in server.worker_pids():
        fds = Path(f"/proc/{pid}/fd")
        for fd in fds.iterdir():
            try:
                target = fd.readlink().name
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                found.append(pid)
    return found
