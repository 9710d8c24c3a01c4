import time, shutil
import joblib, numpy as np
from sklearn.ensemble import ExtraTreesClassifier
from conftest import run_server, wait_until

def rss(pid):
    t = open(f"/proc/{pid}/smaps_rollup").read()
    return int(t.split("Rss:")[1].split()[0])//1024

def test_scratch(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((12000, 64)).astype(np.float32)
    f = ExtraTreesClassifier(n_estimators=30, n_jobs=2, random_state=0).fit(x, rng.integers(0, 10, len(x)))
    (tmp_path / "models").mkdir()
    joblib.dump(f, tmp_path / "models" / "forest.joblib")
    with run_server(tmp_path, workers=1, models=None, env={"DEPOT_LOAD_AT_STARTUP": "false"}) as s:
        time.sleep(1)
        print("start", [rss(p) for p in [s.proc.pid, *s.worker_pids()]])
        for i in range(3):
            s.post("/v2/repository/models/forest/load"); time.sleep(1.5)
            print("loaded", [rss(p) for p in [s.proc.pid, *s.worker_pids()]])
            s.post("/v2/repository/models/forest/unload"); time.sleep(1.5)
            print("unloaded", [rss(p) for p in [s.proc.pid, *s.worker_pids()]])
