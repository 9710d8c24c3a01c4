"""``python -m app``: the CLI against a real server, in-process (``main`` returns
the exit code) and once as a real subprocess. Exit codes are the contract:
0 ok, 1 the server answered an error, 2 usage error, 3 cannot connect."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import requests

from app import cli
from conftest import MODELS, ROOT, free_port, stop, wait_until

XGB = "mushroom-xgboost"
SVM = "mnist-svm"
KEY = "k"


@pytest.fixture(autouse=True)
def no_cli_environment(monkeypatch):
    """The CLI's defaults come from DEPOT_URL / DEPOT_API_KEY: start without them."""
    monkeypatch.delenv("DEPOT_URL", raising=False)
    monkeypatch.delenv("DEPOT_API_KEY", raising=False)


def parse_table(text: str) -> dict[str, dict[str, str]]:
    """Read the index table by the header's column positions, so a misaligned
    row reads wrong; ``{name: {"version", "state", "reason"}}``."""
    header, *rows = text.rstrip("\n").split("\n")
    columns = ["NAME", "VERSION", "STATE", "REASON"]
    assert header.split() == columns, header
    starts = [header.index(c) for c in columns] + [None]
    table = {}
    for row in rows:
        cells = [row[a:b].strip() for a, b in zip(starts, starts[1:])]
        assert all(row[s - 1] == " " for s in starts[1:-1] if s < len(row)), row
        name, version, state, reason = cells
        table[name] = {"version": version, "state": state, "reason": reason}
    return table


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_index_prints_an_aligned_table(server, capsys):
    code, out, err = run(capsys, "index", "--url", server.url)
    assert (code, err) == (0, "")
    table = parse_table(out)
    assert table[SVM] == {"version": "v0.1.0", "state": "READY", "reason": ""}
    assert table[XGB] == {"version": "v0.1.0", "state": "READY", "reason": ""}


def test_index_json_is_the_servers_answer(server, capsys):
    code, out, err = run(capsys, "index", "--json", "--url", server.url)
    assert (code, err) == (0, "")
    assert {e["name"]: e for e in json.loads(out)} == server.index()


def test_unload_then_load(server, capsys):
    try:
        code, out, err = run(capsys, "unload", XGB, "--url", server.url)
        assert (code, out, err) == (0, f"unloaded {XGB}\n", "")
        code, out, _ = run(capsys, "index", "--url", server.url)
        assert code == 0
        assert parse_table(out)[XGB] == {"version": "v0.1.0", "state": "UNAVAILABLE",
                                         "reason": "unloaded"}
        code, out, _ = run(capsys, "index", "--ready", "--url", server.url)
        assert code == 0 and set(parse_table(out)) == {SVM}

        code, out, err = run(capsys, "load", XGB, "--url", server.url)
        assert (code, out, err) == (0, f"loaded {XGB}\n", "")
        code, out, _ = run(capsys, "index", "--url", server.url)
        assert parse_table(out)[XGB]["state"] == "READY"
    finally:
        assert server.post(f"/v2/repository/models/{XGB}/load").status_code == 200
    assert server.index()[XGB]["state"] == "READY"


def test_load_json_prints_the_answer(server, capsys):
    code, out, _ = run(capsys, "load", XGB, "--json", "--url", server.url)
    assert code == 0 and json.loads(out) == {"name": XGB, "load": True}


def test_load_of_an_unknown_model_prints_the_servers_error(server, capsys):
    expected = server.post("/v2/repository/models/no-such-model/load").json()["error"]
    code, out, err = run(capsys, "load", "no-such-model", "--url", server.url)
    assert (code, out) == (1, "")
    assert err == f"depot: {expected}\n"
    assert "no-such-model" in err and "Traceback" not in err


def test_model_names_are_quoted_whole(server, capsys):
    """A '/' or '?' in a name stays in the name: it never reaches another route."""
    for name in ("a/../../index", "x?y", "%2e%2e"):
        code, out, err = run(capsys, "unload", name, "--url", server.url)
        assert (code, out) == (1, ""), name
        assert err.startswith("depot: ") and "Traceback" not in err
    assert server.index()[XGB]["state"] == "READY"


def test_an_unreachable_server_exits_3(capsys):
    url = f"http://127.0.0.1:{free_port()}"
    for argv in (["index"], ["load", XGB], ["unload", XGB]):
        code, out, err = run(capsys, *argv, "--url", url, "--timeout", "5")
        assert (code, out) == (3, "")
        assert err.startswith(f"depot: cannot connect to {url}") and "Traceback" not in err


def test_a_server_that_never_answers_exits_3(capsys):
    with socket.socket() as silent:  # connections queue in the backlog, unanswered
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        code, out, err = run(capsys, "index", "--url", url, "--timeout", "0.5")
    assert (code, out) == (3, "")
    assert err == f"depot: no answer from {url} within 0.5s\n"


@pytest.mark.parametrize("argv", [["frobnicate"], [], ["index", "--url", "localhost:8080"],
                                  ["index", "--timeout", "0"], ["load"], ["load", ""],
                                  ["index", "--no-such-option"]])
def test_usage_errors_exit_2(capsys, argv):
    code, out, err = run(capsys, *argv)
    assert (code, out) == (2, "")
    assert "usage:" in err and "Traceback" not in err


def test_help_lists_every_command_and_option(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("serve", "index", "load", "unload"):
        assert command in out
    for command, options in (("serve", ["--bind", "--workers", "--models"]),
                             ("index", ["--ready", "--url", "--api-key", "--json", "--timeout"]),
                             ("load", ["NAME", "--url", "--api-key", "--json", "--timeout"]),
                             ("unload", ["NAME", "--url", "--api-key", "--json", "--timeout"])):
        code, out, _ = run(capsys, command, "--help")
        assert code == 0
        for option in options:
            assert option in out, (command, option)


def test_the_api_key(make_server, capsys, monkeypatch):
    with make_server(workers=2, env={"DEPOT_API_KEY": KEY}) as server:
        expected = server.post("/v2/repository/index").json()["error"]
        for argv in (["index"], ["unload", XGB], ["index", "--api-key", "wrong"]):
            code, out, err = run(capsys, *argv, "--url", server.url)
            assert (code, out, err) == (1, "", f"depot: {expected}\n"), argv

        code, out, err = run(capsys, "index", "--api-key", KEY, "--url", server.url)
        assert (code, err) == (0, "")
        assert parse_table(out)[XGB]["state"] == "READY"

        # both defaults from the environment
        monkeypatch.setenv("DEPOT_URL", server.url)
        monkeypatch.setenv("DEPOT_API_KEY", KEY)
        code, out, err = run(capsys, "unload", XGB)
        assert (code, out, err) == (0, f"unloaded {XGB}\n", "")
        code, out, err = run(capsys, "load", XGB)
        assert (code, out, err) == (0, f"loaded {XGB}\n", "")


def test_python_dash_m_app_index(server):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPOT_")}
    done = subprocess.run([sys.executable, "-m", "app", "index", "--url", server.url],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    table = parse_table(done.stdout)
    assert {table[m]["state"] for m in (SVM, XGB)} == {"READY"}

    done = subprocess.run([sys.executable, "-m", "app", "index", "--url",
                           f"http://127.0.0.1:{free_port()}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    assert done.stderr.startswith("depot: cannot connect") and "Traceback" not in done.stderr


def test_serve_execs_gunicorn_with_the_repository_config(monkeypatch, tmp_path):
    calls = []

    class Exec(Exception):
        pass

    def execvpe(file, argv, env):
        calls.append((file, argv, env, os.getcwd()))
        raise Exec

    monkeypatch.setattr(os, "execvpe", execvpe)
    monkeypatch.chdir(tmp_path)  # also puts the cwd back after serve's chdir
    with pytest.raises(Exec):
        cli.main(["serve", "--bind", "127.0.0.1:9999", "--workers", "3", "--models", "mine"])
    (file, argv, env, cwd), = calls
    assert file == sys.executable and cwd == str(ROOT)
    assert argv == [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"),
                    "--bind", "127.0.0.1:9999", "--workers", "3"]
    assert env["DEPOT_MODELS"] == str(tmp_path / "mine")

    calls.clear()
    monkeypatch.setenv("DEPOT_MODELS", "/elsewhere")
    with pytest.raises(Exec):
        cli.main(["serve"])
    (_, argv, env, _), = calls
    assert argv[3:] == ["-c", str(ROOT / "gunicorn.conf.py")]
    assert env["DEPOT_MODELS"] == "/elsewhere"


@pytest.mark.server
def test_serve_runs_a_server(tmp_path):
    """The real thing: ``python -m app serve`` becomes gunicorn and serves --models."""
    shutil.copytree(MODELS / SVM, tmp_path / "models" / SVM)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPOT_")}
    env["DEPOT_STATE_DIR"] = str(tmp_path / "state")
    with open(tmp_path / "server.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "app", "serve", "--bind",
                                 f"127.0.0.1:{port}", "--workers", "1", "--models", "models"],
                                cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)},
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                return requests.get(url + "/v2/health/ready", timeout=5).status_code == 200
            except requests.ConnectionError:
                return False
        wait_until(ready, timeout=60)
        done = subprocess.run([sys.executable, "-m", "app", "index", "--url", url], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=60)
        assert list(parse_table(done.stdout)) == [SVM]
    finally:
        stop(proc)
