"""Train the two bundled example models.

usage: python models/train.py [AGARICUS_DIR]

The artifacts are small and committed, so serving and testing never train;
this script documents how they were made and re-creates them byte-for-byte
in spirit (same data, same seeds). AGARICUS_DIR defaults to
../shared/data/agaricus next to the checkout.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import joblib
import numpy as np
import xgboost as xgb
from sklearn.datasets import load_digits, load_svmlight_file
from sklearn.svm import SVC

HERE = Path(__file__).resolve().parent


def write_settings(folder: Path, settings: dict) -> None:
    (folder / "model-settings.json").write_text(json.dumps(settings, indent=2) + "\n")


def train_mnist_svm() -> None:
    digits = load_digits()
    x = digits.data.astype(np.float32)
    half = len(x) // 2
    model = SVC(gamma=0.001).fit(x[:half], digits.target[:half])
    print(f"mnist-svm: accuracy {model.score(x[half:], digits.target[half:]):.3f}")
    folder = HERE / "mnist-svm"
    joblib.dump(model, folder / "model.joblib")
    write_settings(folder, {
        "name": "mnist-svm",
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "v0.1.0"},
    })


def train_mushroom_xgboost(data: Path) -> None:
    def read(name: str):
        x, y = load_svmlight_file(str(data / name), n_features=126, zero_based=False)
        return x.toarray().astype(np.float32), y.astype(int)

    x_train, y_train = read("agaricus.txt.train")
    x_test, y_test = read("agaricus.txt.test")
    model = xgb.XGBClassifier(n_estimators=10, max_depth=3, random_state=0)
    model.fit(x_train, y_train)
    print(f"mushroom-xgboost: accuracy {model.score(x_test, y_test):.3f}")
    folder = HERE / "mushroom-xgboost"
    model.save_model(folder / "model.json")
    write_settings(folder, {
        "name": "mushroom-xgboost",
        "implementation": "mlserver_xgboost.XGBoostModel",
        "parameters": {"uri": "./model.json", "version": "v0.1.0"},
    })


if __name__ == "__main__":
    default = HERE.parent.parent / "shared" / "data" / "agaricus"
    train_mnist_svm()
    train_mushroom_xgboost(Path(sys.argv[1]) if len(sys.argv) > 1 else default)
