"""The processes this package runs itself (its command line, its service) keep numpy's BLAS on one thread, whose
spinning workers otherwise take a core from the encoder (see knnbe_qdrant._blas); a thread count the environment
chose stands. Each case runs in a process of its own, which starts from two BLAS threads on any machine."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from knnbe_qdrant._blas import THREAD_VARIABLES

PRELUDE = """
import sys
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
print(blas_threads())
"""

SERVICE = PRELUDE + """
from fastapi.testclient import TestClient
from knnbe_qdrant import Connection
from knnbe_qdrant.service.app import create_app
with TestClient(create_app(Connection(path=sys.argv[1]), load_in_background=False)) as client:
    assert client.get("/readyz").status_code == 200
    print(blas_threads())
"""


def blas_threads_after(script: str, *args: str, env: dict[str, str] | None = None) -> int:
    clean = {k: v for k, v in os.environ.items() if k not in (*THREAD_VARIABLES, "QDRANT_URL")}
    r = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, env={**clean, **(env or {})},
                       check=False, timeout=300)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    return int(r.stdout.decode().split()[-1])


@pytest.mark.parametrize(("env", "expected"), [({}, 1), ({"OPENBLAS_NUM_THREADS": "2"}, 2)])
def test_the_command_line_runs_blas_on_one_thread_unless_told(cli_store, env, expected):
    assert blas_threads_after(CLI, "status", "--store", str(cli_store), env=env) == expected


def test_the_service_runs_blas_on_one_thread(cli_store):
    assert blas_threads_after(SERVICE, str(cli_store)) == 1
