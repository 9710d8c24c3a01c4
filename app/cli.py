"""``python -m app``: run Depot, and drive its Model Repository API from a shell.

Why a CLI when ``curl`` works: operators and deploy scripts want a readable
index, one line per action, the server's own error message instead of a JSON
blob, and exit codes a script can branch on (0 ok, 1 the server said no,
2 usage error, 3 no server to talk to) without parsing anything.

It speaks HTTP with the standard library only (``urllib.request``), so it
needs nothing beyond Depot's own requirements. The environment is read for two
defaults only, ``DEPOT_URL`` and ``DEPOT_API_KEY``; HTTP proxy variables are
deliberately ignored (the opener has no proxy handler), so a repository call
and its API key go straight to the server named by ``--url``. ``serve`` passes
the environment on to gunicorn unchanged, plus ``DEPOT_MODELS`` when
``--models`` is given.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from http.client import HTTPException
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_URL = "http://127.0.0.1:8080"
USER_AGENT = "depot-cli"

OK, SERVER_ERROR, USAGE, UNREACHABLE = 0, 1, 2, 3
INTERRUPTED = 130
COLUMNS = ("name", "version", "state", "reason")


class CliError(Exception):
    """A failure to report as ``depot: <message>`` with a given exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# -- argument types (argparse turns their ValueError into a usage error) -------

def server_url(value: str) -> str:
    parts = urllib.parse.urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(
            f"expected a URL such as {DEFAULT_URL}, got {value!r}")
    return value.strip().rstrip("/")


def api_key(value: str) -> str:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise argparse.ArgumentTypeError("the API key must not contain control characters")
    return value


def _positive(value: str, convert: Callable[[str], Any], what: str) -> Any:
    try:
        number = convert(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}") from None
    if not 0 < number < float("inf"):
        raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}")
    return number


def positive_seconds(value: str) -> float:
    return _positive(value, float, "a positive number of seconds")


def positive_int(value: str) -> int:
    return _positive(value, int, "a positive whole number")


def model_name(value: str) -> str:
    if not value:
        raise argparse.ArgumentTypeError("the model name must not be empty")
    return value


# -- the parser ---------------------------------------------------------------

def client_options(environ: dict[str, str]) -> argparse.ArgumentParser:
    """Options shared by every command that talks to a running server."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("server options")
    group.add_argument("--url", type=server_url,
                       default=environ.get("DEPOT_URL") or DEFAULT_URL,
                       help=f"Depot's base URL (default: $DEPOT_URL, else {DEFAULT_URL})")
    group.add_argument("--api-key", type=api_key, metavar="KEY",
                       default=environ.get("DEPOT_API_KEY") or None,
                       help="sent as 'Authorization: Bearer KEY' (default: $DEPOT_API_KEY)")
    group.add_argument("--json", action="store_true",
                       help="print the server's JSON answer as it came, not a table or line")
    group.add_argument("--timeout", type=positive_seconds, default=30.0, metavar="SECONDS",
                       help="give up on a call after this many seconds (default: 30)")
    return common


def build_parser(environ: dict[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app",
        description="Run Depot, or manage the models of a running Depot server.",
        epilog="exit codes: 0 ok, 1 the server answered an error, "
               "2 usage error, 3 cannot connect to the server")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = client_options(environ)

    serve = commands.add_parser(
        "serve", help="run the server (gunicorn with gunicorn.conf.py)",
        description="Run Depot under gunicorn with the repository's gunicorn.conf.py. "
                    "Options left out keep gunicorn.conf.py's (or GUNICORN_CMD_ARGS') values.")
    serve.add_argument("--bind", metavar="HOST:PORT",
                       help="address to listen on (default: 127.0.0.1:8080)")
    serve.add_argument("--workers", type=positive_int, metavar="N",
                       help="number of worker processes (default: 2)")
    serve.add_argument("--models", type=Path, metavar="DIR",
                       help="model repository folder, passed as DEPOT_MODELS (default: ./models)")
    serve.set_defaults(run=serve_command)

    index = commands.add_parser(
        "index", parents=[common], help="list every model with its state",
        description="List every model in the repository: name, version, state and reason.")
    index.add_argument("--ready", action="store_true", help="list only READY models")
    index.set_defaults(run=index_command)

    for action, verb, text in (("load", "loaded", "load or reload a model on every worker"),
                               ("unload", "unloaded", "unload a model (it stays listed)")):
        sub = commands.add_parser(action, parents=[common], help=text,
                                  description=text[0].upper() + text[1:] + ".")
        sub.add_argument("name", type=model_name, metavar="NAME", help="the model's name")
        sub.set_defaults(run=model_command(action, verb))
    return parser


# -- HTTP ---------------------------------------------------------------------

def post(args: argparse.Namespace, path: str, body: dict[str, Any]) -> bytes:
    """POST ``body`` as JSON; return the answer's bytes, or raise CliError."""
    headers = {"Content-Type": "application/json", "Accept": "application/json",
               "User-Agent": USER_AGENT}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    request = urllib.request.Request(args.url + path, data=json.dumps(body).encode(),
                                     headers=headers, method="POST")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=args.timeout) as response:
            return response.read()
    except urllib.error.HTTPError as e:
        raise CliError(error_message(e.code, e.reason, read_quietly(e)), SERVER_ERROR) from None
    except urllib.error.URLError as e:
        raise CliError(f"cannot connect to {args.url}: {describe(e.reason)}", UNREACHABLE) \
            from None
    except TimeoutError:
        raise CliError(f"no answer from {args.url} within {args.timeout:g}s", UNREACHABLE) \
            from None
    except (OSError, HTTPException) as e:
        raise CliError(f"lost the connection to {args.url}: {describe(e)}", UNREACHABLE) \
            from None


def read_quietly(error: urllib.error.HTTPError) -> bytes:
    try:
        return error.read()
    except (OSError, HTTPException):
        return b""


def describe(reason: object) -> str:
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


def error_message(status: int, reason: str, body: bytes) -> str:
    """The server's ``{"error": ...}`` message, else the HTTP status line."""
    try:
        message = json.loads(body)["error"]
    except (ValueError, TypeError, KeyError):
        message = None
    if isinstance(message, str) and message:
        return message
    return f"HTTP {status} {reason}".rstrip()


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise CliError(f"the server's answer is not JSON: {body[:200]!r}", SERVER_ERROR) from None


def echo_raw(body: bytes) -> None:
    text = body.decode("utf-8", errors="replace")
    print(text if text.endswith("\n") else text + "\n", end="")


# -- commands -------------------------------------------------------------------

def format_table(entries: Sequence[dict[str, Any]]) -> str:
    """Aligned columns NAME VERSION STATE REASON; the last one is not padded."""
    rows = [[c.upper() for c in COLUMNS]]
    rows += [[str(entry.get(c, "")) for c in COLUMNS] for entry in entries]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS) - 1)]
    lines = ["  ".join([cell.ljust(w) for cell, w in zip(row, widths)] + [row[-1]]).rstrip()
             for row in rows]
    return "\n".join(lines)


def index_command(args: argparse.Namespace) -> int:
    body = post(args, "/v2/repository/index", {"ready": True} if args.ready else {})
    if args.json:
        echo_raw(body)
        return OK
    entries = parse_json(body)
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise CliError(f"the server's index is not a list of models: {body[:200]!r}",
                       SERVER_ERROR)
    print(format_table(entries))
    return OK


def model_command(action: str, verb: str) -> Callable[[argparse.Namespace], int]:
    """The ``load`` or ``unload`` command: one POST, one line."""
    def run(args: argparse.Namespace) -> int:
        path = f"/v2/repository/models/{urllib.parse.quote(args.name, safe='')}/{action}"
        body = post(args, path, {})
        if args.json:
            echo_raw(body)
        else:
            print(f"{verb} {args.name}")
        return OK
    return run


def gunicorn_command(args: argparse.Namespace) -> list[str]:
    argv = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py")]
    if args.bind:
        argv += ["--bind", args.bind]
    if args.workers:
        argv += ["--workers", str(args.workers)]
    return argv


def serve_command(args: argparse.Namespace) -> int:
    """Replace this process with gunicorn, run from the repository root (where
    ``app`` and ``runtimes`` import from). A relative --models is resolved
    against the caller's folder first."""
    env = dict(os.environ)
    if args.models is not None:
        env["DEPOT_MODELS"] = str(args.models.resolve())
    argv = gunicorn_command(args)
    os.chdir(ROOT)
    os.execvpe(argv[0], argv, env)
    return OK  # not reached: execvpe returns only by raising


# -- entry point ------------------------------------------------------------------

def parse(argv: Sequence[str] | None, environ: dict[str, str]) -> argparse.Namespace | int:
    """The parsed arguments, or the exit code argparse chose (help, usage error)."""
    try:
        return build_parser(environ).parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (OK if e.code is None else USAGE)


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit code (0, 1, 2 or 3)."""
    args = parse(argv, dict(os.environ))
    if isinstance(args, int):
        return args
    try:
        return args.run(args)
    except CliError as e:
        print(f"depot: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return INTERRUPTED
