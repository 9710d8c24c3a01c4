"""app.repository in-process: what counts as a model on disk."""
from __future__ import annotations

import json
import shutil

from app import repository
from conftest import MODELS


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
        json.dumps({"implementation": "somewhere.Else"}))
    specs = {s.name: s for s in repository.scan(tmp_path)}
    assert "bad model-settings.json" in specs["bad"].error
    assert "no model artifact" in specs["escape"].error
    assert "no runtime for implementation" in specs["impl"].error


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
