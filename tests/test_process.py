"""The processes this package runs itself (its command line, its service) keep numpy's BLAS on one thread, whose
spinning workers otherwise take a core from the encoder, and run the garbage collector's young passes less often
(see knnbe_qdrant._process); a thread count the environment chose, or a collector setting made before, stands. Each
case runs in a process of its own, which starts from two BLAS threads on any machine."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import pytest

from knnbe_qdrant._process import THREAD_VARIABLES, YOUNG_THRESHOLD, fewer_collections

PRELUDE = """
import gc, sys
import numpy  # loads its BLAS, which threadpoolctl then finds
from threadpoolctl import threadpool_info, threadpool_limits
threadpool_limits(2, user_api="blas")

def blas_threads():
    return max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")

assert blas_threads() == 2
"""

CLI = PRELUDE + """
from knnbe_qdrant.cli import main
main(sys.argv[1:])
print(gc.get_threshold()[0], blas_threads())
"""

SERVICE = PRELUDE + """
from fastapi.testclient import TestClient
from knnbe_qdrant import Connection
from knnbe_qdrant.service.app import create_app
with TestClient(create_app(Connection(path=sys.argv[1]), load_in_background=False)) as client:
    assert client.get("/readyz").status_code == 200
    print(gc.get_threshold()[0], blas_threads())
"""


def settings_after(script: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, int]:
    """(the collector's young threshold, numpy's BLAS threads) the script's process ends with."""
    clean = {k: v for k, v in os.environ.items() if k not in (*THREAD_VARIABLES, "QDRANT_URL")}
    r = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, env={**clean, **(env or {})},
                       check=False, timeout=300)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    young, threads = r.stdout.decode().split()[-2:]
    return int(young), int(threads)


@pytest.mark.parametrize(("env", "expected"), [({}, 1), ({"OPENBLAS_NUM_THREADS": "2"}, 2)])
def test_the_command_line_runs_blas_on_one_thread_unless_told_and_collects_less(cli_store, env, expected):
    assert settings_after(CLI, "status", "--store", str(cli_store), env=env) == (YOUNG_THRESHOLD, expected)


def test_the_service_runs_blas_on_one_thread_and_collects_less(cli_store):
    assert settings_after(SERVICE, str(cli_store)) == (YOUNG_THRESHOLD, 1)


@pytest.mark.parametrize(("before", "after"), [((700, 10, 10), (YOUNG_THRESHOLD, 10, 10)),
                                               ((900, 5, 20), (YOUNG_THRESHOLD, 5, 20)),
                                               ((50_000, 10, 10), (50_000, 10, 10)),  # set higher: stands
                                               ((0, 10, 10), (0, 10, 10))])  # 0 turns the collector off: stands
def test_fewer_collections_raises_only_the_young_threshold(before, after):
    saved = gc.get_threshold()
    try:
        gc.set_threshold(*before)
        fewer_collections()
        assert gc.get_threshold() == after
    finally:
        gc.set_threshold(*saved)
