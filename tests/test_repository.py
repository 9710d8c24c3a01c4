"""app.registry.repository in-process: what counts as a model on disk; and, against a
real server, that a symlink out of the models folder is refused."""
from __future__ import annotations

import json
import shutil

import pytest

from app.registry import repository
from conftest import MODELS, output, v2_body, wait_until


def test_bundled_models(tmp_path):
    specs = {s.name: s for s in repository.scan(MODELS)}
    assert set(specs) == {"mnist-svm", "mushroom-xgboost"}
    assert specs["mnist-svm"].runtime == "sklearn"
    assert specs["mnist-svm"].version == "v0.1.0"
    assert specs["mushroom-xgboost"].runtime == "xgboost"


def test_layouts(tmp_path):
    shutil.copy(MODELS / "mnist-svm" / "model.joblib", tmp_path / "iris.joblib")
    (tmp_path / "plain").mkdir()
    shutil.copy(MODELS / "mushroom-xgboost" / "model.json", tmp_path / "plain" / "model.json")
    for junk in (".hidden.joblib", "x.joblib.swp", "y.tmp", "notes.txt", "4913"):
        (tmp_path / junk).write_text("junk")
    specs = {s.name: s for s in repository.scan(tmp_path)}
    assert set(specs) == {"iris", "plain"}
    assert specs["iris"].runtime == "sklearn" and specs["plain"].runtime == "xgboost"


def test_settings_errors_are_reported_not_raised(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model-settings.json").write_text("{not json")
    (tmp_path / "escape").mkdir()
    (tmp_path / "escape" / "model-settings.json").write_text(
        json.dumps({"parameters": {"uri": "../../etc/passwd"}}))
    (tmp_path / "impl").mkdir()
    shutil.copy(MODELS / "mnist-svm" / "model.joblib", tmp_path / "impl" / "model.joblib")
    (tmp_path / "impl" / "model-settings.json").write_text(
        json.dumps({"implementation": "mlserver_huggingface.HuggingFaceRuntime"}))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "model-settings.json").write_text(
        json.dumps({"implementation": "somewhere.Else"}))
    specs = {s.name: s for s in repository.scan(tmp_path)}
    assert "bad model-settings.json" in specs["bad"].error
    assert "no model artifact" in specs["escape"].error
    assert "no runtime for implementation" in specs["impl"].error
    # a runtime of one's own: its folder is the artifact, imported at load
    assert (specs["mine"].runtime, specs["mine"].artifact, specs["mine"].error) == \
        ("somewhere.Else", tmp_path / "mine", None)


def test_settings_name_wins(tmp_path):
    (tmp_path / "folder").mkdir()
    shutil.copy(MODELS / "mnist-svm" / "model.joblib", tmp_path / "folder" / "model.joblib")
    (tmp_path / "folder" / "model-settings.json").write_text(json.dumps({"name": "digits"}))
    assert [s.name for s in repository.scan(tmp_path)] == ["digits"]


def test_triton_version_folders(tmp_path):
    for version in ("1", "2", "10"):
        (tmp_path / "iris" / version).mkdir(parents=True)
        shutil.copy(MODELS / "mnist-svm" / "model.joblib", tmp_path / "iris" / version)
    (tmp_path / "iris" / "3").mkdir()  # a version folder with no artifact
    specs = {s.version: s for s in repository.scan(tmp_path)}
    assert set(specs) == {"1", "2", "3", "10"}
    assert specs["10"].artifact == tmp_path / "iris" / "10" / "model.joblib"
    assert specs["10"].runtime == "sklearn"
    assert "no model artifact" in specs["3"].error


def test_versions_share_the_settings(tmp_path):
    for version in ("1", "2"):
        (tmp_path / "folder" / version).mkdir(parents=True)
        shutil.copy(MODELS / "mushroom-xgboost" / "model.json", tmp_path / "folder" / version)
    (tmp_path / "folder" / "model-settings.json").write_text(json.dumps(
        {"name": "mush", "implementation": "mlserver_xgboost.XGBoostModel"}))
    assert sorted((s.name, s.version) for s in repository.scan(tmp_path)) == \
        [("mush", "1"), ("mush", "2")]


def test_mlserver_versions_in_separate_folders(tmp_path):
    for version in ("v1", "v2"):
        folder = tmp_path / f"m-{version}"
        folder.mkdir()
        shutil.copy(MODELS / "mnist-svm" / "model.joblib", folder)
        (folder / "model-settings.json").write_text(json.dumps(
            {"name": "m", "parameters": {"version": version}}))
    assert sorted(s.version for s in repository.scan(tmp_path)) == ["v1", "v2"]


def test_version_order():
    versions = ["10", "2", "v0.10.0", "v0.9.1", "1"]
    assert sorted(versions, key=repository.version_key) == ["1", "2", "10", "v0.9.1", "v0.10.0"]


# -- symlinks: the models folder is a trust boundary ----------------------------

OUTSIDE = "symlink leads outside the models folder: "
# id, links (path in the models folder -> target; "@out" is a folder outside it),
# settings files to write, follow_symlinks, the model, its error (None: usable)
SYMLINKS = [
    ("top-level file", {"iris.joblib": "@out/model.joblib"}, {}, False,
     "iris", OUTSIDE + "iris.joblib -> @out/model.joblib; set DEPOT_FOLLOW_SYMLINKS=true"),
    ("folder", {"digits": "@out"}, {}, False, "digits", OUTSIDE + "digits -> @out;"),
    ("artifact in a folder", {"x/model.joblib": "@out/model.joblib"}, {}, False,
     "x", OUTSIDE + "x/model.joblib -> @out/model.joblib;"),
    ("uri through a link", {"u/sub": "@out"}, {"u": {"parameters": {"uri": "sub/model.joblib"}}},
     False, "u", OUTSIDE + "u/sub -> @out;"),
    ("settings file", {"s/model-settings.json": "@out/settings.json"}, {}, False,
     "s", OUTSIDE + "s/model-settings.json -> @out/settings.json;"),
    ("broken", {"gone.joblib": "@out/nothing.joblib"}, {}, False,
     "gone", "broken symlink: gone.joblib -> @out/nothing.joblib"),
    ("broken, followed", {"gone.joblib": "@out/nothing.joblib"}, {}, True,
     "gone", "broken symlink: gone.joblib -> @out/nothing.joblib"),
    ("inside the folder", {"alias.joblib": "real/model.joblib", "linked": "real"}, {}, False,
     "alias", None),
    ("inside: uri through a link", {"v/sub": "../real"}, {"v": {"parameters": {"uri": "sub"}}},
     False, "v", None),
    ("followed: file", {"iris.joblib": "@out/model.joblib"}, {}, True, "iris", None),
    ("followed: folder", {"digits": "@out"}, {}, True, "digits", None),
    ("followed: uri", {"u/sub": "@out"}, {"u": {"parameters": {"uri": "sub/model.joblib"}}},
     True, "u", None),
]


@pytest.mark.parametrize("links, settings, follow, name, error",
                         [row[1:] for row in SYMLINKS], ids=[row[0] for row in SYMLINKS])
def test_symlinks(tmp_path, links, settings, follow, name, error):
    root, out = tmp_path / "models", (tmp_path / "outside").resolve()
    (root / "real").mkdir(parents=True)
    out.mkdir()
    shutil.copy(MODELS / "mnist-svm" / "model.joblib", root / "real")
    shutil.copy(MODELS / "mnist-svm" / "model.joblib", out)
    (out / "settings.json").write_text("{}")
    for path, target in links.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).symlink_to(target.replace("@out", str(out)))
    for folder, content in settings.items():
        (root / folder / "model-settings.json").write_text(json.dumps(content))
    specs = {s.name: s for s in repository.scan(root, follow_symlinks=follow)}
    assert specs["real"].error is None
    spec = specs[name]
    if error is None:
        assert spec.error is None and spec.runtime == "sklearn"
        assert spec.artifact is not None and spec.artifact.is_file()
    else:
        assert spec.error is not None and error.replace("@out", str(out)) in spec.error
    assert repository.find(root, name, follow_symlinks=follow) == [spec]


@pytest.mark.slow
def test_a_symlink_out_of_the_folder_is_refused_by_the_server(make_server, tmp_path, digits,
                                                              mnist_model):
    shutil.copytree(MODELS, tmp_path / "models", ignore=shutil.ignore_patterns("*.py"))
    out = tmp_path / "outside"
    out.mkdir()
    shutil.copy(MODELS / "mnist-svm" / "model.joblib", out)
    (tmp_path / "models" / "digits").symlink_to(out)
    reason = f"{OUTSIDE}digits -> {out.resolve()}; set DEPOT_FOLLOW_SYMLINKS=true to follow it"
    with make_server(workers=2, models=None) as server:
        entry = server.index()["digits"]
        assert entry["state"] == "UNAVAILABLE"
        assert entry["reason"].startswith("load failed: ") and reason in entry["reason"]
        r = server.post("/v2/repository/models/digits/load")
        assert r.status_code == 400 and reason in r.json()["error"]
        assert server.infer("digits", v2_body(digits[:1])).status_code == 400
        assert server.index()["mnist-svm"]["state"] == "READY"
    with make_server(workers=2, models=None, env={"DEPOT_FOLLOW_SYMLINKS": "true",
                                                  "DEPOT_STATE_DIR": str(tmp_path / "fresh")}) \
            as server:
        assert server.index()["digits"] == {"name": "digits", "state": "READY", "reason": ""}
        assert server.post("/v2/repository/models/digits/load").status_code == 200
        got = output(server.infer("digits", v2_body(digits[:5])))
        assert got.ravel().tolist() == mnist_model.predict(digits[:5]).tolist()


def _twin(folder, name: str, version: str) -> None:
    shutil.copytree(MODELS / "mnist-svm", folder, ignore=shutil.ignore_patterns("*.py"))
    (folder / "model-settings.json").write_text(json.dumps({
        "name": name, "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": version}}))


def test_two_folders_declaring_one_model_name_both(tmp_path):
    _twin(tmp_path / "a-copy", "twin", "v1")
    _twin(tmp_path / "b-copy", "twin", "v1")
    _twin(tmp_path / "c-other", "twin", "v2")
    specs = {(s.name, s.version): s for s in repository.scan(tmp_path)}
    assert set(specs) == {("twin", "v1"), ("twin", "v2")}
    assert specs[("twin", "v1")].error == (f"{repository.DUPLICATE} a-copy, b-copy; "
                                           "keep one of them")
    assert specs[("twin", "v2")].error is None


def test_a_model_declared_twice_is_listed_once_with_why_and_a_warning(make_server, tmp_path):
    with make_server(workers=2, models=None) as server:
        for folder in ("a-copy", "b-copy"):
            _twin(server.models / folder, "twin", "v1")
        entry = wait_until(lambda: server.index().get("twin"), timeout=20)
        entries = server.post("/v2/repository/index", json={}).json()
        assert [e["name"] for e in entries].count("twin") == 1
        assert entry["state"] == "UNAVAILABLE" and "a-copy, b-copy" in entry["reason"]
        r = server.post("/v2/repository/models/twin/load")
        assert r.status_code == 400 and "a-copy, b-copy" in r.json()["error"], r.text
        lines = [json.loads(line) for line in server.log.read_text().splitlines()
                 if line.startswith("{")]
        assert any(l.get("model") == "twin" and l.get("event") in ("register", "change")
                   and l["level"] == "warning" and "a-copy, b-copy" in l["reason"] for l in lines)


def _mlserver_project(root, **server_settings) -> None:
    """The layout of `mlserver start .`: settings.json beside ./models/<name>/."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "settings.json").write_text(json.dumps({"debug": True, **server_settings}))
    for name in ("mnist-svm", "mushroom-xgboost"):
        shutil.copytree(MODELS / name, root / "models" / name)


def test_an_mlserver_project_root_finds_its_models_and_is_no_model(tmp_path):
    _mlserver_project(tmp_path)
    specs = repository.scan(tmp_path)
    assert sorted((s.name, s.source.relative_to(tmp_path).as_posix(), s.error) for s in specs) == [
        ("mnist-svm", "models/mnist-svm", None),
        ("mushroom-xgboost", "models/mushroom-xgboost", None)]


def test_the_projects_settings_json_is_honoured(tmp_path):
    from app.settings import Settings

    _mlserver_project(tmp_path / "a", load_models_at_startup=False)
    settings = Settings.from_env({"DEPOT_MODELS": str(tmp_path / "a")})
    assert settings.load_at_startup is False
    assert Settings.from_env({"DEPOT_MODELS": str(tmp_path / "a"),
                              "DEPOT_LOAD_AT_STARTUP": "true"}).load_at_startup is True
    _mlserver_project(tmp_path / "b", model_repository_root="./models")
    assert Settings.from_env({"DEPOT_MODELS": str(tmp_path / "b")}).models == \
        (tmp_path / "b" / "models").resolve()


def test_a_server_started_on_an_mlserver_project(make_server, tmp_path, digits, mnist_model):
    _mlserver_project(tmp_path / "models", load_models_at_startup=False)
    with make_server(workers=2, models=None) as server:
        index = server.index()
        assert set(index) == {"mnist-svm", "mushroom-xgboost"}  # settings.json is no model
        assert {e["state"] for e in index.values()} == {"UNAVAILABLE"}
        assert server.post("/v2/repository/models/mnist-svm/load").status_code == 200
        got = output(server.infer("mnist-svm", v2_body(digits[:3])))
        assert got.ravel().tolist() == mnist_model.predict(digits[:3]).tolist()
