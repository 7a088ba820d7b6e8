"""The OpenAPI contract, tested by the field's standard tool: Schemathesis generates requests from /openapi.json
(examples, coverage, fuzzing and the stateful phase, every check on) and sends them to the real service, a process
on loopback over the embedded store, once with each role's key. A failure is a request the schema allows and the
service refuses, one it forbids and the service takes, an undeclared status, a 5xx, a wrong Allow, or a resource
created and then not found. `scripts/contract.sh` runs the same with more examples."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from knnbe_qdrant.service.loadtest import _free_port
from tests.helpers import run, start_service

EXAMPLES = int(os.environ.get("KNNBE_CONTRACT_EXAMPLES", "5"))


@pytest.fixture(scope="module")
def service(cli_store, tmp_path_factory):
    path = tmp_path_factory.mktemp("contract") / "store"
    shutil.copytree(cli_store, path)
    proc, base = start_service(path, _free_port(), path.parent / "serve.log")
    yield base, path
    proc.terminate()
    proc.wait(timeout=30)


@pytest.mark.parametrize("role", ["reader", "curator", "admin"])
def test_the_service_keeps_its_openapi_contract(service, role, tmp_path):
    base, store = service
    args = ["keys", "create", "--role", role, *(["--tenant", "acme"] if role != "admin" else []), "--json"]
    made = run(*args, store=store)
    assert made.returncode == 0, made.stderr.decode()
    secret = __import__("json").loads(made.stdout)["secret"]
    schemathesis = Path(sys.executable).with_name("schemathesis")
    r = subprocess.run([str(schemathesis), "run", f"{base}/openapi.json", "-H", f"Authorization: Bearer {secret}",
                        "--checks", "all", "--max-examples", str(EXAMPLES), "--seed", "1", "--no-color"],
                       capture_output=True, cwd=tmp_path, timeout=900, check=False)
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, out[-6000:]
    [summary] = [line for line in out.splitlines() if " generated, " in line]
    generated, passed = (int(part.split()[0]) for part in summary.split(","))
    assert generated == passed > 100, summary  # every generated request checked, and enough of them
