"""Kill an import half-way (SIGKILL: no clean-up runs), run it again: the memory converges, nothing duplicated,
nothing lost. Acknowledged writes survive the kill (Edge's write-ahead log)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from knnbe_qdrant import EdgeStore
from knnbe_qdrant._schema import MEMORY
from tests.helpers import SMALL_BUILD, run

pytestmark = pytest.mark.slow  # ~95 s: an import killed, then run again over 20,000 rows

N_ROWS = 20000
KILL_AFTER_S = (7, 12, 20, 30)  # later tries only on a slow or busy machine


def test_killed_import_converges_when_run_again(tmp_path, small_skills):
    taxonomy = tmp_path / "skills.jsonl"
    taxonomy.write_text("".join(json.dumps({"id": s.id, "label": s.label}) + "\n" for s in small_skills[:30]))
    store = tmp_path / "store"
    assert run("build", "--taxonomy", taxonomy, *SMALL_BUILD, store=store).returncode == 0
    with EdgeStore(store) as s:
        before = s.count(MEMORY)
    rows = tmp_path / "big.csv"
    labels = [s.label for s in small_skills[:30]]
    with open(rows, "w", encoding="utf-8") as f:
        f.write("text,skill\n")
        for i in range(N_ROWS):
            f.write(f"\"Synthetic job-ad sentence number {i} for {labels[i % 30]}\",\"{labels[i % 30]}\"\n")
    env = {**os.environ, "KNNBE_STORE": str(store)}
    env.pop("QDRANT_URL", None)
    cmd = [sys.executable, "-m", "knnbe_qdrant", "memory", "import", str(rows), "--tenant", "acme", "--no-progress"]
    partial = 0
    for kill_after in KILL_AFTER_S:  # a slower machine may have stored nothing yet at the first try
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(kill_after)  # start-up takes ~1 s, then a chunk of 4,096 rows is stored every few seconds
        assert proc.poll() is None, "the import finished before it could be killed; make the file bigger"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with EdgeStore(store) as s:
            partial = s.count(MEMORY) - before
        if partial:
            break
    assert 0 < partial < N_ROWS, partial
    r = subprocess.run(cmd, env=env, capture_output=True, check=False)
    assert r.returncode == 0, r.stderr.decode()
    assert f"already stored {partial}".encode() in r.stdout
    with EdgeStore(store) as s:
        assert s.count(MEMORY) - before == N_ROWS
