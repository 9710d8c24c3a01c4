"""app.repository in-process: what counts as a model on disk."""
from __future__ import annotations

import json
import shutil

from app import repository
from conftest import MODELS


def test_bundled_models(tmp_path):
    specs = repository.scan(MODELS)
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
    specs = repository.scan(tmp_path)
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
    specs = repository.scan(tmp_path)
    assert "bad model-settings.json" in specs["bad"].error
    assert "no model artifact" in specs["escape"].error
    assert "no runtime for implementation" in specs["impl"].error


def test_settings_name_wins(tmp_path):
    (tmp_path / "folder").mkdir()
    shutil.copy(MODELS / "mnist-svm" / "model.joblib", tmp_path / "folder" / "model.joblib")
    (tmp_path / "folder" / "model-settings.json").write_text(json.dumps({"name": "digits"}))
    assert set(repository.scan(tmp_path)) == {"digits"}
