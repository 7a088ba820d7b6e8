"""Trust across rebuilds, backups and restores: no curated edit is lost by one, killed or racing an edit; a damaged
store is refused with the way out; every bad command-line input is one clear line (issue 20; the rest of the trust
suite is named in test_trust.py)."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from itertools import islice
from pathlib import Path

import numpy as np
import pytest

from knnbe_qdrant import ConflictError, Curator, SkillMapper, default_memory
from knnbe_qdrant import _schema as S
from knnbe_qdrant.store.documents import FileDocuments
from tests.helpers import (
    BACKENDS,
    PYTHON_ID,
    SMALL_BUILD,
    SQL,
    build_small,
    kill_a_command_after,
    kill_a_rebuild_after,
    one_clear_line,
    run,
)


# ---- no edit is lost by a rebuild; backups -----------------------------------------------------------------------
def _curate(store: Path) -> None:
    for args in (["skill", "add", "--id", "acme:kafka", "--label", "Apache Kafka streaming", "--tenant", "acme"],
                 ["memory", "add", "--skill", "acme:kafka", "--text", "Building Kafka pipelines", "--tenant", "acme"],
                 ["memory", "add", "--skill", "SQL", "--text", "Our analysts live in SQL all day"],
                 ["skill", "retire", "SQL", "--tenant", "beta"]):
        r = run(*args, store=store)
        assert r.returncode == 0, (args, r.stderr.decode())


def _tenants(store: Path) -> dict:
    r = run("tenant", "list", "--json", store=store)
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout)


def _memory_of(store: Path, skill: str, tenant: str | None = None) -> list[str]:
    args = ["memory", "list", "--skill", skill, "--json", *(["--tenant", tenant] if tenant else [])]
    r = run(*args, store=store)
    assert r.returncode == 0, r.stderr.decode()
    return [json.loads(line)["text"] for line in r.stdout.decode().splitlines()]


def test_command_line_edits_are_in_the_audit_logs_the_service_reads(store_copy):
    from knnbe_qdrant.store.documents import AUDIT, tenant_audit

    for args in (["skill", "add", "--id", "acme:kafka", "--label", "Apache Kafka streaming", "--tenant", "acme"],
                 ["skill", "retire", "SQL", "--tenant", "acme"], ["skill", "reinstate", "SQL", "--tenant", "acme"],
                 ["skill", "reinstate", "SQL", "--tenant", "acme"],  # already active: no edit, no entry
                 ["memory", "add", "--skill", "SQL", "--text", "Global reporting in SQL", "--user", "bob"]):
        r = run(*args, store=store_copy)
        assert r.returncode == 0, (args, r.stderr.decode())
    documents = FileDocuments(store_copy)
    acme = [(e["key"].startswith("cli:"), e["action"]) for e in documents.tail(tenant_audit("acme"), 10)]
    assert acme == [(True, "skill unhidden"), (True, "skill hidden"), (True, "skill add")], acme
    latest = documents.tail(AUDIT, 1)[0]
    assert (latest["tenant"], latest["key"], latest["action"]) == (None, "cli:bob", "memory add")
    assert run("tenant", "delete", "acme", store=store_copy).returncode == 0
    assert not documents.tail(tenant_audit("acme"), 1) and documents.tail(AUDIT, 1)[0]["action"] == "tenant delete"


def test_a_forced_rebuild_carries_every_tenant_and_curator_edit(store_copy, cli_taxonomy):
    _curate(store_copy)
    before = _tenants(store_copy)
    r = run("build", "--force", "--taxonomy", cli_taxonomy, *SMALL_BUILD, store=store_copy)
    assert r.returncode == 0, r.stderr.decode()
    assert "carried 1 curated skills, 2 curated sentences" in r.stderr.decode()
    assert _tenants(store_copy) == before
    assert "Building Kafka pipelines" in _memory_of(store_copy, "acme:kafka", "acme")
    assert "Our analysts live in SQL all day" in _memory_of(store_copy, "SQL")
    beta = run("map", "--json", "--tenant", "beta", "Writing SQL queries", store=store_copy)
    assert "SQL" not in [s["label"] for s in json.loads(beta.stdout)["skills"]]
    r = run("build", "--force", "--discard-edits", "--taxonomy", cli_taxonomy, *SMALL_BUILD, store=store_copy)
    assert r.returncode == 0, r.stderr.decode()
    # Their points are gone; their audit logs (the command line's edits) stay, until `tenant delete` removes them.
    assert _tenants(store_copy) == {t: {"skills": 0, "memory": 0, "hidden": 0} for t in before}


def test_a_forced_rebuild_carries_reinstated_skills(store_copy, cli_taxonomy):
    for args in (["skill", "add", "--id", "acme:kafka", "--label", "Apache Kafka streaming", "--tenant", "acme"],
                 ["skill", "retire", "acme:kafka", "--tenant", "acme"], ["skill", "reinstate", "acme:kafka",
                                                                         "--tenant", "acme"],
                 ["skill", "retire", "SQL"], ["skill", "reinstate", "SQL"],  # the global layer's own
                 ["skill", "retire", "PostgreSQL", "--tenant", "acme"],
                 ["skill", "reinstate", "PostgreSQL", "--tenant", "acme"]):
        r = run(*args, store=store_copy)
        assert r.returncode == 0, (args, r.stderr.decode())
    r = run("build", "--force", "--taxonomy", cli_taxonomy, *SMALL_BUILD, store=store_copy)
    assert r.returncode == 0, r.stderr.decode()
    listed = run("skill", "list", "--tenant", "acme", "--json", store=store_copy).stdout.decode()
    revisions = {json.loads(line)["label"]: json.loads(line)["revision"] for line in listed.splitlines()}
    assert {"Apache Kafka streaming", "SQL", "PostgreSQL"} <= set(revisions), revisions
    # Revisions come along: a stale edit stays refused after the rebuild (acme's hiding is acme's, not PostgreSQL's).
    assert [revisions[k] for k in ("Apache Kafka streaming", "SQL", "PostgreSQL")] == [3, 2, 0]
    r = run("skill", "update", "SQL", "--description", "stale", "--revision", "1", store=store_copy)
    assert r.returncode != 0 and "at revision 2, not 1" in r.stderr.decode()


@pytest.mark.parametrize("kill_after", [1.0, pytest.param(3.0, marks=pytest.mark.slow)])  # the second: slow suite
def test_an_edit_made_while_a_killed_rebuild_is_pending_survives_its_resumption(store_copy, cli_taxonomy, kill_after):
    kill_a_rebuild_after(store_copy, cli_taxonomy, kill_after)
    r = run("memory", "add", "--skill", "SQL", "--text", "Taught while the rebuild was pending", "--tenant", "acme",
            store=store_copy)
    assert r.returncode == 0, r.stderr.decode()
    r = run("build", "--force", "--taxonomy", cli_taxonomy, *SMALL_BUILD, store=store_copy)
    assert r.returncode == 0, r.stderr.decode()
    assert "Taught while the rebuild was pending" in _memory_of(store_copy, "SQL", "acme")


def test_backup_and_restore_bring_back_a_damaged_store_with_its_curated_data(store_copy, tmp_path):
    _curate(store_copy)
    before = _tenants(store_copy)
    r = run("backup", tmp_path / "bk", store=store_copy)
    assert r.returncode == 0, r.stderr.decode()
    assert run("backup", tmp_path / "bk", store=store_copy).returncode == 2  # never over another backup
    one_clear_line(run("backup", store_copy / "bk", store=store_copy), "inside the store")  # a drop would take it
    _damage_vectors(store_copy, "truncate")
    assert run("map", "Programming in Python", store=store_copy).returncode == 1
    assert run("restore", tmp_path / "bk", store=store_copy).returncode == 1  # a store is there: --force
    r = run("restore", "--force", tmp_path / "bk", store=store_copy)
    assert r.returncode == 0, r.stderr.decode()
    assert _tenants(store_copy) == before
    assert "Building Kafka pipelines" in _memory_of(store_copy, "acme:kafka", "acme")
    mapped = run("map", "--json", "Programming in Python", store=store_copy)
    assert json.loads(mapped.stdout)["skills"][0]["id"] == PYTHON_ID
    # a damaged backup is refused before anything is written
    with gzip.open(tmp_path / "bk" / "memory.jsonl.gz", "ab") as f:
        f.write(b'{"id": "x"}\n')
    one_clear_line(run("restore", "--force", tmp_path / "bk", store=store_copy), "damaged", "SHA-256")
    assert mapped.stdout == run("map", "--json", "Programming in Python", store=store_copy).stdout


@pytest.mark.parametrize("kill_after", [0.9, pytest.param(1.5, marks=pytest.mark.slow)])  # the second: slow suite
def test_a_killed_restore_leaves_the_store_serving_and_resumes_to_exactly_the_backup(store_copy, tmp_path, kill_after):
    # restore --force builds beside the store like a rebuild (about 0.5 s of work here after 1.2 s of start-up)
    _curate(store_copy)
    before, answer = _tenants(store_copy), run("map", "--json", "Writing SQL queries", store=store_copy).stdout
    assert run("backup", tmp_path / "bk", store=store_copy).returncode == 0
    assert run("memory", "add", "--skill", "SQL", "--text", "Taught after the backup", store=store_copy).returncode == 0
    kill_a_command_after(store_copy, kill_after, "restore", "--force", tmp_path / "bk")
    assert run("tenant", "list", "--json", store=store_copy).returncode == 0  # whichever store serves, it is whole
    r = run("restore", "--force", tmp_path / "bk", store=store_copy)
    assert r.returncode == 0, r.stderr.decode()
    assert _tenants(store_copy) == before
    assert "Taught after the backup" not in _memory_of(store_copy, "SQL")
    assert "Our analysts live in SQL all day" in _memory_of(store_copy, "SQL")
    assert run("map", "--json", "Writing SQL queries", store=store_copy).stdout == answer


# ---- a damaged store is refused, not answered ------------------------------------------------------------------
def _damage_vectors(store: Path, how: str) -> None:
    """Damage the memory's stored vectors where they hold data (a chunk file is preallocated: cutting the zeros
    past the last point would damage nothing): cut the data to half, or write random bytes over 10% of it."""
    generation = json.loads((store / "manifest.json").read_text())["generation"]
    chunks = sorted((store / f"memory_g{generation}" / "segments").glob("*/vector_storage/vectors/chunk_*.mmap"))
    assert chunks, "no vector chunk file found"
    rng = np.random.default_rng(7)
    for chunk in chunks:
        data = np.fromfile(chunk, dtype=np.uint8)
        used = int(np.flatnonzero(data)[-1]) + 1 if data.any() else 0
        if used < 4096:
            continue
        with open(chunk, "r+b") as fh:
            if how == "truncate":
                fh.truncate(used // 2)
            else:
                for at in rng.choice(used // 64, size=max(1, used // 640), replace=False):
                    fh.seek(int(at) * 64)
                    fh.write(rng.integers(0, 256, 64, dtype=np.uint8).tobytes())


@pytest.mark.parametrize("how", ["truncate", "random bytes"])
def test_a_store_with_damaged_vectors_is_refused_with_the_way_out(store_copy, how):
    _damage_vectors(store_copy, how)
    r = run("map", "--json", "Programming in Python", store=store_copy)
    if r.returncode == 0:  # the engine may repair itself (its WAL): then the answer must be right
        assert json.loads(r.stdout)["skills"][0]["id"] == PYTHON_ID, how
        return
    one_clear_line(r, "damaged", "knnbe-qdrant restore", "build --force")


# ---- every bad input is one clear line -------------------------------------------------------------------------
def test_bad_command_line_input_is_one_clear_line(store_copy, tmp_path, cli_taxonomy):
    csv_file = tmp_path / "postings.csv"
    csv_file.write_text('id,text\n1,"We need Python\n2,SQL and more\n', encoding="utf-8")
    one_clear_line(run("map-postings", csv_file, tmp_path / "out", "--no-progress", store=store_copy), "postings.csv",
                   "CSV")
    big = tmp_path / "spans.csv"
    big.write_text("sentence,label\n" + "x" * 200_000 + ",SQL\n", encoding="utf-8")
    r = run("eval", big, store=store_copy)
    assert b"Traceback" not in r.stderr, r.stderr.decode()
    bom = tmp_path / "bom.jsonl"
    bom.write_text('\ufeff{"sentence": "Writing SQL", "labels": ["SQL"]}\n', encoding="utf-8")
    r = run("eval", bom, "--mode", "bi-encoder", store=store_copy)
    assert r.returncode == 0, r.stderr.decode()
    for args in (["map", b"Python \xff SQL"], ["memory", "add", "--skill", "SQL", "--text", b"SQL \xff"],
                 ["skill", "add", "--id", b"x\xff", "--label", "y", "--tenant", "acme"]):
        cmd = [sys.executable, "-m", "knnbe_qdrant", "--store", str(store_copy), *args]
        r = subprocess.run(cmd, capture_output=True, check=False)
        assert r.returncode == 2, (args, r.stderr.decode())
        one_clear_line(r, "not UTF-8")
    # The builder's name marks the points a rebuild makes anew from the sources and so does not carry: a curator's
    # sentence written under it was acknowledged, then lost by the next `build --force`.
    builders = (run("memory", "add", "--skill", "SQL", "--text", "Under the builder's name", "--user",
                    "knnbe-qdrant build", store=store_copy),
                run("memory", "add", "--skill", "SQL", "--text", "Under the builder's name", store=store_copy,
                    env={"KNNBE_USER": " knnbe-qdrant build "}))
    for r, where in zip(builders, ("--user", "KNNBE_USER")):
        one_clear_line(r, "reserved", where)
    # A store folder that cannot be made (a read-only home, a path through a file) was a traceback from mkdir.
    (tmp_path / "a-file").write_text("not a folder")
    one_clear_line(run("build", "--taxonomy", cli_taxonomy, "--memory-sources", "esco_alt_labels", "--no-progress",
                       store=tmp_path / "a-file" / "store"), "cannot create the store folder", "KNNBE_STORE")
    for args, words in ((["serve", "--ssl-certfile", tmp_path / "nope.pem", "--ssl-keyfile", tmp_path / "k"],
                         ["nope.pem", "no such file"]),):
        one_clear_line(run(*args, store=store_copy), *words)
    for flag, value in (("--port", "99999"), ("--max-body-bytes", "-5"), ("--max-sentences", "0"),
                        ("--batch-wait-ms", "-1")):
        r = run("serve", flag, value, store=store_copy)
        assert r.returncode == 2 and flag in r.stderr.decode() and b"Traceback" not in r.stderr, r.stderr.decode()


# ---- the library's rebuild, backup and restore, on both backends ----------------------------------------------
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "embedded"])  # the CLI tests above: embedded
def test_rebuild_carry_and_backup_restore_on_a_server_store(backend, tmp_path, encoder, small_skills):
    """The library path of both on qdrant-client (aliases, the meta collection): a rebuild keeps the curated data,
    and a backup of it restores into an embedded store that maps the same."""
    small_skills = small_skills[:60]
    small_memory = default_memory(small_skills)
    from knnbe_qdrant._build import rebuild_store
    from knnbe_qdrant._carry import carry_edits
    from knnbe_qdrant.store.backup import backup, restore
    from tests.helpers import make_store

    store = build_small(backend, tmp_path, encoder, small_skills, small_memory)
    curator = Curator(store, encoder)
    curator.add_skill("acme:kafka", "Apache Kafka streaming", tenant="acme")
    curator.add_sentence("Building Kafka pipelines", "acme:kafka", tenant="acme")
    sql_id = curator.resolve_skill("SQL")[S.F_SKILL_ID]
    text = next(curator.list_memory("SQL"))["text"]
    curator.remove_sentence(text, "SQL")  # a built global sentence removed: a tombstone
    curator.retire_skill("SQL", tenant="beta")
    curator.update_skill("acme:kafka", description="streams", tenant="acme")
    sentences = ["Building Kafka pipelines for events", SQL]
    want = {t: [[s.id for s in r.skills] for r in SkillMapper(store, encoder, exact=True).map(sentences, tenant=t)]
            for t in ("acme", "beta")}
    rebuild_store(store, encoder, skills=small_skills, memory=small_memory, progress=False,
                  carry=lambda old, new: carry_edits(old, new, encoder))
    mapper = SkillMapper(store, encoder, exact=True)
    got = {t: [[s.id for s in r.skills] for r in mapper.map(sentences, tenant=t)] for t in ("acme", "beta")}
    assert got == want
    assert not store.retrieve(S.MEMORY, [S.memory_point_id(S.GLOBAL_TENANT, sql_id, text)])
    assert text not in [p["text"] for p in Curator(store, encoder).list_memory("SQL")]
    backup(store, tmp_path / "bk")
    restored = make_store("embedded", tmp_path / "restored")
    restore(restored, tmp_path / "bk")
    mapper = SkillMapper(restored, encoder, exact=True)
    assert {t: [[s.id for s in r.skills] for r in mapper.map(sentences, tenant=t)] for t in ("acme", "beta")} == want
    assert Curator(restored, encoder).tenants() == Curator(store, encoder).tenants()
    restored.close()
    store.close()


def test_a_backup_naming_a_log_outside_the_store_is_refused_before_anything_is_written(racing, tmp_path):
    # A log's kind becomes a file name in the store directory: a backup (checksums redone to match) that names
    # another file is refused, naming documents.json, and the store it was to be restored into is not created.
    import hashlib

    from knnbe_qdrant import EdgeStore, InputFileError
    from knnbe_qdrant.store.backup import backup, restore

    store, _ = racing
    backup(store, tmp_path / "bk")
    docs_path, index_path = tmp_path / "bk" / "documents.json", tmp_path / "bk" / "backup.json"
    docs = json.loads(docs_path.read_text())
    docs["../../escaped"] = [{"action": "x"}]
    docs_path.write_text(json.dumps(docs))
    index = json.loads(index_path.read_text())
    index["files"]["documents.json"]["sha256"] = hashlib.sha256(docs_path.read_bytes()).hexdigest()
    index_path.write_text(json.dumps(index))
    target = tmp_path / "target" / "store"
    with pytest.raises(InputFileError, match=r"documents\.json.*'\.\./\.\./escaped'"):
        restore(EdgeStore(target, create=True), tmp_path / "bk")
    assert not (tmp_path / "target" / "escaped.jsonl").exists() and not (tmp_path / "escaped.jsonl").exists()
    assert not (target / "manifest.json").exists()
    # A log of its own (format 2) under such a name, and a file no backup holds, are refused as well.
    files = index["files"]
    for name in ("logs/../../escaped.jsonl.gz", "logs/keys.jsonl.gz", "../outside.jsonl.gz"):
        index_path.write_text(json.dumps({**index, "files": {**files, name: {"sha256": "0", "entries": 1}}}))
        with pytest.raises(InputFileError, match=f"names '{re.escape(name)}', which is no file a backup holds"):
            restore(EdgeStore(target, create=True), tmp_path / "bk")
        assert not (target / "manifest.json").exists()


def test_a_backup_keeps_the_whole_audit_log_however_long(racing, tmp_path, monkeypatch):
    # A backup read each log through `tail`, which reads at most TAIL_BYTES (4 MB) of a log file: a store with a
    # longer audit log was backed up, and restored, with its newest 4 MB only.
    from knnbe_qdrant import EdgeStore
    from knnbe_qdrant.store import documents as docs_module
    from knnbe_qdrant.store.backup import backup, restore
    from knnbe_qdrant.store.documents import record_edit, tenant_audit

    monkeypatch.setattr(docs_module, "TAIL_BYTES", 4096)  # the bound, small: a tail reads one 64 KB block
    store, _ = racing
    documents = store.documents()
    record_edit(documents, "acme", "test", "memory add", text="sentence number 0 " + "x" * 100)
    for kind in ("audit", tenant_audit("acme")):  # and 999 more, 180 KB a log, in one write each
        documents.extend(kind, [{"tenant": "acme", "key": "test", "action": "memory add",
                                 "text": f"sentence number {i} " + "x" * 100} for i in range(1, 1000)])
    if store.backend == "embedded":  # the bound bites: a tail of the file sees the newest entries only
        assert len(documents.tail("audit", 10**9)) < 1000
    backup(store, tmp_path / "bk")
    target = EdgeStore(tmp_path / "restored", create=True)
    try:
        restore(target, tmp_path / "bk")
        restored = target.documents()
        for kind in ("audit", tenant_audit("acme")):
            texts = [e["text"] for e in restored.entries(kind) if e.get("action") == "memory add"]
            assert texts == [f"sentence number {i} " + "x" * 100 for i in range(1000)], (kind, len(texts))
    finally:
        target.close()


def _long_logs(store, n):
    from knnbe_qdrant.store.documents import record_edit, tenant_audit

    documents = store.documents()
    record_edit(documents, "acme", "test", "memory add", text="sentence number 0")
    for kind in ("audit", tenant_audit("acme")):
        documents.extend(kind, [{"tenant": "acme", "key": "test", "action": "memory add",
                                 "text": f"sentence number {i}"} for i in range(1, n)])
    return {kind: documents.entries(kind) for kind in ("audit", tenant_audit("acme"))}


def test_a_backup_streams_each_log_to_a_file_of_its_own_and_a_version_1_backup_still_restores(racing, tmp_path,
                                                                                              monkeypatch):
    """Format 1 kept every log inside documents.json: a backup read each log whole into memory, and a restore the
    whole file (about 1 GB of Python objects per million entries, a tenant's audit quota). Format 2 streams each
    log to logs/<log>.jsonl.gz and back."""
    import hashlib

    from knnbe_qdrant import EdgeStore, InputFileError, StoreCorruptError
    from knnbe_qdrant.store import backup as backup_module
    from knnbe_qdrant.store import meta_documents
    from knnbe_qdrant.store.backup import KEYED_DOCUMENTS, backup, restore
    from knnbe_qdrant.store.documents import Documents, FileDocuments
    from knnbe_qdrant.store.meta_documents import MetaDocuments

    store, _ = racing
    logs = _long_logs(store, 400)
    # read as it is written, never whole: on a server a page at a time by the write's clock (small pages here)
    monkeypatch.setattr(FileDocuments, "entries", Documents.entries)
    monkeypatch.setattr(Documents, "tail", lambda *a: pytest.fail("a backup read a whole log"))
    monkeypatch.setattr(MetaDocuments, "_sorted_tail", lambda *a: pytest.fail("a backup read a whole log"))
    scroll = MetaDocuments._scroll
    monkeypatch.setattr(MetaDocuments, "_scroll", lambda self, kind: pytest.fail("a backup read a whole log")
                        if kind in logs else scroll(self, kind))
    monkeypatch.setattr(meta_documents, "LOG_PAGE", 50)
    backup(store, tmp_path / "bk")
    monkeypatch.undo()
    index = json.loads((tmp_path / "bk" / "backup.json").read_text())
    assert index["version"] == 2
    assert {k: v["entries"] for k, v in index["files"].items() if k.startswith("logs/")} == {
        f"logs/{kind}.jsonl.gz": len(entries) for kind, entries in logs.items()}
    assert set(json.loads((tmp_path / "bk" / "documents.json").read_text())) <= set(KEYED_DOCUMENTS)
    target = EdgeStore(tmp_path / "restored", create=True)
    try:
        restore(target, tmp_path / "bk")
        assert {kind: target.documents().entries(kind) for kind in logs} == logs
    finally:
        target.close()
    # A log line that is no entry (checksums redone to match) is refused, naming the file and line, before anything
    # is written.
    damaged = tmp_path / "damaged"
    shutil.copytree(tmp_path / "bk", damaged)
    log = damaged / "logs" / "audit.jsonl.gz"
    log.write_bytes(gzip.compress(b'{"action": "memory add"}\n[1, 2]\n'))
    bad = json.loads((damaged / "backup.json").read_text())
    bad["files"]["logs/audit.jsonl.gz"] = {"sha256": hashlib.sha256(log.read_bytes()).hexdigest(), "entries": 2}
    (damaged / "backup.json").write_text(json.dumps(bad))
    with pytest.raises(InputFileError, match=r"audit\.jsonl\.gz:2: not a log entry"):
        restore(EdgeStore(tmp_path / "never", create=True), damaged)
    assert not (tmp_path / "never" / "manifest.json").exists()
    # A collection's file that is no gzip at all was a traceback, and the half-restored store said to run `build`.
    skills = damaged / "skills.jsonl.gz"
    skills.write_bytes(b"not gzip\n")
    bad["files"]["skills.jsonl.gz"]["sha256"] = hashlib.sha256(skills.read_bytes()).hexdigest()
    shutil.copy(tmp_path / "bk" / "logs" / "audit.jsonl.gz", log)
    bad["files"]["logs/audit.jsonl.gz"] = index["files"]["logs/audit.jsonl.gz"]
    (damaged / "backup.json").write_text(json.dumps(bad))
    # Every point is now checked before anything is written (as the logs are): nothing is left half-restored.
    half = EdgeStore(tmp_path / "half", create=True)
    try:
        with pytest.raises(InputFileError, match=r"skills\.jsonl\.gz:1: not a backed-up point \(Not a gzipped"):
            restore(half, damaged)
        assert not half.exists()
        # A restore that stops half-way for another reason (a full disk, a server gone) leaves the store marked,
        # and opening it says what to run again.
        with monkeypatch.context() as m:
            m.setattr(backup_module, "_write", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left")))
            with pytest.raises(OSError, match="No space left"):
                restore(half, tmp_path / "bk")
        with pytest.raises(StoreCorruptError, match=r"half-built \(state 'restoring'\): run `knnbe-qdrant restore"):
            half.check_ready()
        restore(half, tmp_path / "bk", force=True)
        assert {kind: half.documents().entries(kind) for kind in logs} == logs
    finally:
        half.close()
    # The same backup as format 1 wrote it: its logs inside documents.json.
    old = tmp_path / "bk"
    docs = json.loads((old / "documents.json").read_text())
    for kind in logs:
        with gzip.open(old / "logs" / f"{kind}.jsonl.gz", "rt", encoding="utf-8") as f:
            docs[kind] = [json.loads(line) for line in f]
        (old / "logs" / f"{kind}.jsonl.gz").unlink()
        del index["files"][f"logs/{kind}.jsonl.gz"]
    (old / "documents.json").write_text(json.dumps(docs))
    index["version"] = 1
    index["files"]["documents.json"]["sha256"] = hashlib.sha256((old / "documents.json").read_bytes()).hexdigest()
    (old / "backup.json").write_text(json.dumps(index))
    target = EdgeStore(tmp_path / "restored-1", create=True)
    try:
        restore(target, old)
        assert {kind: target.documents().entries(kind) for kind in logs} == logs
    finally:
        target.close()


def test_a_damaged_point_in_a_backup_is_refused_before_anything_is_written(racing, tmp_path):
    """A collection's file damaged with its checksum redone to match (a wrong-length, non-unit or NaN vector, a
    payload that is no object or lacks its text, an id that is no UUID, a line gone) is refused naming the file and
    line, before anything is written: until 2026-12-08 it was found half-way through the load, which left a new store
    half-restored and kept every edit of a forced restore's store paused until then."""
    import base64
    import hashlib

    from knnbe_qdrant import EdgeStore, InputFileError
    from knnbe_qdrant.store.backup import backup, restore

    store, encoder = racing
    backup(store, tmp_path / "bk")
    with gzip.open(tmp_path / "bk" / "memory.jsonl.gz", "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    dimension = len(np.frombuffer(base64.b64decode(rows[0]["vector"]), dtype="<f4"))

    def vector(values):
        return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode("ascii")

    damages = [
        ("a vector of 3 numbers", {"vector": vector([1.0, 0.0, 0.0])}),
        ("a vector that is not a unit vector", {"vector": vector(np.full(dimension, 0.5))}),
        ("a vector that is not a unit vector", {"vector": vector(np.full(dimension, np.nan))}),
        ("a payload that is a JSON list", {"payload": ["skill_id"]}),
        # a skill's payload in memory's file (the two files swapped, say): the opened store would call it damage
        (r"lost payload fields \(of \['tenant', 'skill_id', 'text'\]\)",
         {"payload": {"tenant": S.GLOBAL_TENANT, "skill_id": "s", "label": "SQL"}}),
        ("badly formed hexadecimal UUID", {"id": "not-a-point-id"}),
        ("Only base64 data is allowed", {"vector": "AAAA!"}),
    ]
    curator = Curator(store, encoder)
    sql = curator.resolve_skill("SQL")["skill_id"]
    before = [[m.id for m in r.skills] for r in SkillMapper(store, encoder, exact=True).map([SQL])]
    for n, (what, change) in enumerate([*damages, ("holds", None)]):
        damaged = tmp_path / f"damaged-{n}"
        shutil.copytree(tmp_path / "bk", damaged)
        lines = [json.dumps({**row, **change}) if i == 2 and change else json.dumps(row) for i, row in enumerate(rows)
                 if change is not None or i != 2]  # the last case: a line gone
        path = damaged / "memory.jsonl.gz"
        path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
        index = json.loads((damaged / "backup.json").read_text())
        index["files"]["memory.jsonl.gz"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        (damaged / "backup.json").write_text(json.dumps(index))
        where = (rf"memory\.jsonl\.gz:3: not a backed-up point \({what}" if change is not None
                 else rf"memory\.jsonl\.gz holds {len(rows) - 1} points where the backup recorded {len(rows)}")
        fresh = EdgeStore(tmp_path / f"new-{n}", create=True)
        try:
            with pytest.raises(InputFileError, match=where):
                restore(fresh, damaged)
            assert not fresh.exists()
        finally:
            fresh.close()
        with pytest.raises(InputFileError, match=where):
            restore(store, damaged, force=True)
    # The store that a forced restore of each would have replaced serves as before, and takes edits at once.
    assert [[m.id for m in r.skills] for r in SkillMapper(store, encoder, exact=True).map([SQL])] == before
    assert curator.add_sentence("Tuning slow SQL joins", sql) is True
    # An id in capitals (any spelling Python's uuid reads) is the same point: restored, not deleted as a stray.
    capitals = tmp_path / "capitals"
    shutil.copytree(tmp_path / "bk", capitals)
    path = capitals / "memory.jsonl.gz"
    path.write_bytes(gzip.compress("".join(json.dumps({**row, "id": row["id"].upper()} if i == 2 else row) + "\n"
                                           for i, row in enumerate(rows)).encode()))
    index = json.loads((capitals / "backup.json").read_text())
    index["files"]["memory.jsonl.gz"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (capitals / "backup.json").write_text(json.dumps(index))
    fresh = EdgeStore(tmp_path / "whole", create=True)
    try:
        restore(fresh, capitals)
        assert fresh.count("memory") == len(rows)
        assert [r.id for r in fresh.retrieve("memory", [rows[2]["id"]], payload=False)] == [rows[2]["id"]]
    finally:
        fresh.close()


def test_a_backup_refuses_a_point_no_restore_would_take_and_names_it(racing, tmp_path, monkeypatch):
    """A point another program wrote into a collection without its text (mapping passes over it; the store's open
    check calls it damage when its sample meets it) made a backup that no restore takes: the backup says so now,
    naming the point, while the store is there to mend, and leaves no part of itself behind."""
    import uuid

    from knnbe_qdrant import EdgeStore, StoreCorruptError
    from knnbe_qdrant.store import integrity
    from knnbe_qdrant.store.backup import backup, restore

    store, encoder = racing
    foreign = str(uuid.uuid4())
    store.upsert(S.MEMORY, [foreign], encoder.encode(["a sentence written without its text field"]),
                 [{S.F_TENANT: S.GLOBAL_TENANT, S.F_SKILL_ID: "custom:s"}])
    # The open check's sample of 64 points may meet it too, and then says so itself (about one run in ten here):
    # kept out, so that what is tested is the backup's own check of every point.
    with monkeypatch.context() as m:
        m.setattr(integrity, "verify", lambda *a, **k: None)
        with pytest.raises(StoreCorruptError, match=rf"point {foreign} of 'memory' has lost payload fields .* no "
                                                    "restore"):
            backup(store, tmp_path / "bk")
    assert not (tmp_path / "bk").exists() and not (tmp_path / "bk.partial").exists()
    store.delete(S.MEMORY, [foreign])
    backup(store, tmp_path / "bk")
    restored = EdgeStore(tmp_path / "restored", create=True)
    try:
        restore(restored, tmp_path / "bk")
        assert restored.count(S.MEMORY) == store.count(S.MEMORY)
    finally:
        restored.close()


def test_a_restore_stopped_while_it_writes_a_log_writes_it_whole_and_once_when_run_again(racing, tmp_path,
                                                                                        monkeypatch):
    """A log of a restore is written only into a store where it is empty (a store edited since keeps its own
    history). Written in pieces, a restore stopped half-way left part of a log, which the next restore took for
    the store's own and kept: the rest of the history was lost. On files the log is renamed into place whole; on a
    server a mark says the log is being written, and the next restore writes it again over the same points."""
    from knnbe_qdrant import EdgeStore
    from knnbe_qdrant.store import backup as backup_module
    from knnbe_qdrant.store.backup import backup, restore
    from knnbe_qdrant.store.documents import tenant_audit

    store, _ = racing
    logs = _long_logs(store, 2000)
    backup(store, tmp_path / "bk")
    read, reads = backup_module._log_entries, []

    def stopped_half_way(path):
        reads.append(path.name)
        for i, entry in enumerate(read(path)):
            if i == 1000 and reads.count(path.name) == 2 and "@" in path.name:  # its write, after its check
                raise KeyboardInterrupt  # as a kill would, in the middle of the tenant's log
            yield entry

    target = store if store.backend != "embedded" else EdgeStore(tmp_path / "restored", create=True)
    if target is store:  # a server store: restored over itself, its logs emptied first (a new server store's)
        for kind in logs:
            store.documents().clear_log(kind)
    monkeypatch.setattr(backup_module, "_log_entries", stopped_half_way)
    with pytest.raises(KeyboardInterrupt):
        restore(target, tmp_path / "bk", force=target is store)
    documents = target.documents()
    if target.backend == "embedded":
        assert documents.entries(tenant_audit("acme")) == [] and documents.logs() == ["audit"]
    monkeypatch.undo()
    if target.backend == "embedded":  # what a kill leaves beside the log: not a log, and written over
        (target.path / ".audit@acme.jsonl.restoring").write_text('{"left": "by a kill"}\n')
        assert documents.logs() == ["audit"]
    restore(target, tmp_path / "bk", force=True)
    assert {kind: documents.entries(kind) for kind in logs} == logs
    assert documents.logs() == sorted(logs)
    restore(target, tmp_path / "bk", force=True)  # once: a restore into a store whose logs hold entries keeps them
    assert {kind: documents.entries(kind) for kind in logs} == logs
    if target is not store:
        target.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_edit_made_while_a_rebuild_carries_the_curated_data_is_not_lost_by_its_swap(backend, tmp_path, encoder,
                                                                                        small_skills):
    """The window reliability.md named: an edit made between the carry and the swap went to the old collections,
    which the swap then left behind. Now edits wait for the swap, and land in the new build."""
    from knnbe_qdrant._build import rebuild_store
    from knnbe_qdrant._carry import carry_edits

    small_skills = small_skills[:40]
    small_memory = default_memory(small_skills)
    store = build_small(backend, tmp_path, encoder, small_skills, small_memory)
    curator = Curator(store, encoder)
    skill = small_skills[0].id
    curator.add_sentence("carried: made before the rebuild", skill, tenant="acme")
    carrying, edited = threading.Event(), threading.Event()

    def carry(old, new):
        report = carry_edits(old, new, encoder)
        carrying.set()
        edited.wait(1.0)  # the edit below comes now, after the carry read everything; it must wait for the swap
        return report

    def edit():
        carrying.wait(60)
        curator.add_sentence("made while the rebuild carried", skill, tenant="acme")
        curator.retire_skill(small_skills[1].id, tenant="acme")  # a hide mark, on a point the new build makes anew
        edited.set()

    editor = threading.Thread(target=edit)
    editor.start()
    rebuild_store(store, encoder, skills=small_skills, memory=small_memory, progress=False, carry=carry)
    editor.join(60)
    assert edited.is_set()
    texts = {p["text"] for p in curator.list_memory(skill, tenant="acme", own_only=True)}
    assert texts == {"carried: made before the rebuild", "made while the rebuild carried"}
    assert small_skills[1].id not in {p["skill_id"] for p in curator.list_skills(tenant="acme")}
    store.close()


def test_a_fence_whose_lease_lapses_while_held_is_noticed_and_a_rebuild_then_refuses_its_swap(tmp_path, encoder,
                                                                                             small_skills,
                                                                                             monkeypatch):
    """On a server a fence held alone is a lease, renewed while held. When the server refused the renewals for a
    whole lease, the lease ran out unnoticed: edits came in while a deletion or a rebuild's carry went on, and the
    rebuild swapped in a build without them. Now the holder knows (`Held.check`, and the hold says so when
    released), and a rebuild whose pause lapsed keeps the old store. Qdrant-client's local mode, the lease code
    forced (local mode alone would use the in-process fences)."""
    from knnbe_qdrant._build import rebuild_store
    from knnbe_qdrant._carry import carry_edits
    from knnbe_qdrant.store import fences, locks

    small_skills = small_skills[:40]
    small_memory = default_memory(small_skills)
    store = build_small("qdrant-local", tmp_path, encoder, small_skills, small_memory)
    refusing = threading.Event()
    real_call = store._call

    def call(fn, *args, **kwargs):  # while `refusing`, the server refuses the held fence's renewals
        if refusing.is_set() and fn == store.client.upsert and threading.current_thread().name.startswith("fence "):
            raise ConnectionError("the server is unreachable")
        return real_call(fn, *args, **kwargs)

    monkeypatch.setattr(store, "_call", call)
    monkeypatch.setattr(locks, "LEASE_S", 0.6)

    def edit_in_another_thread():
        outcome: list[object] = []

        def write():
            try:
                with fences.lease_edit(store, None, wait=0.2):
                    outcome.append("edited")
            except ConflictError as exc:
                outcome.append(exc)

        # The edit's own writes reach the server, the holder's renewals still do not: until 2026-12-07 this let
        # both through, and a renewal landing first (under load) made the edit wait for a live fence.
        other = threading.Thread(target=write)
        other.start()
        other.join(10)
        return outcome[0]

    with fences.lease_alone(store, fences.ALL) as held:  # refusals shorter than a lease: nothing lapses
        refusing.set()
        time.sleep(0.25)
        refusing.clear()
        time.sleep(0.5)
        held.check(margin=0)

    def lapsing():
        with fences.lease_alone(store, fences.ALL) as held:
            refusing.set()
            time.sleep(1.0)
            with pytest.raises(ConflictError, match="lapsed"):
                held.check()
            assert edit_in_another_thread() == "edited"  # what the holder must know: edits got in

    with pytest.raises(ConflictError, match="lapsed"):  # and the hold says so when released
        lapsing()

    curator = Curator(store, encoder)
    skill = small_skills[0].id
    curator.add_sentence("carried: made before the rebuild", skill, tenant="acme")
    before = store.manifest.generation
    monkeypatch.setattr(store, "edits_paused", lambda: fences.lease_alone(store, fences.ALL))

    def carry(old, new):
        report = carry_edits(old, new, encoder)
        refusing.set()
        time.sleep(1.0)  # the pause lapses: an edit now lands in the old collections, which the carry read already
        assert edit_in_another_thread() == "edited"
        return report

    with pytest.raises(ConflictError, match="lapsed"):
        rebuild_store(store, encoder, skills=small_skills, memory=small_memory, progress=False, carry=carry)
    refusing.clear()
    assert store.manifest.generation == before  # the old store serves on, every edit in it
    texts = {p["text"] for p in curator.list_memory(skill, tenant="acme", own_only=True)}
    assert texts == {"carried: made before the rebuild"}
    store.close()


def test_a_backup_is_a_copy_of_one_moment_an_edit_made_while_it_reads_waits(racing, tmp_path, monkeypatch):
    """A backup listed a collection's ids, then read their points: a sentence moved to another skill in between (its
    old point deleted, its new one not listed) was in neither place, and a restore lost it. Edits now wait while a
    backup reads the store (on a server, other processes edit it meanwhile)."""
    from knnbe_qdrant.store.backup import backup

    store, encoder = racing
    curator = Curator(store, encoder)
    skills = [r.payload[S.F_SKILL_ID] for r in islice(store.scroll(S.SKILLS, payload=True), 2)]
    text = "a sentence a curator moves while the backup runs"
    curator.add_sentence(text, skills[0], tenant="acme")
    reading, moved, during = threading.Event(), threading.Event(), []
    retrieve = store.retrieve

    def slow_retrieve(collection, ids, *args, **kwargs):
        # The backup reading its points (more at once than the 64 that opening the store samples), slowly enough
        # for an edit to come meanwhile.
        if kwargs.get("with_vectors") and len(ids) > 64 and threading.current_thread() is threading.main_thread():
            reading.set()
            time.sleep(0.3)
            during.append(moved.is_set())
        return retrieve(collection, ids, *args, **kwargs)

    monkeypatch.setattr(store, "retrieve", slow_retrieve)

    def move():
        reading.wait(30)
        curator.relabel(text, skills[0], skills[1], tenant="acme")
        moved.set()

    mover = threading.Thread(target=move)
    mover.start()
    backup(store, tmp_path / "bk")
    mover.join(30)
    assert moved.is_set() and during and not any(during), during  # the move waited for the backup's reads
    with gzip.open(tmp_path / "bk" / f"{S.MEMORY}.jsonl.gz", "rt", encoding="utf-8") as f:
        copies = [json.loads(line)["payload"] for line in f if text in line]
    assert [(p[S.F_TENANT], p[S.F_SKILL_ID]) for p in copies] == [("acme", skills[0])]
    assert [p["skill_id"] for p in curator.list_memory(skills[1], tenant="acme", own_only=True)
            if p["text"] == text] == [skills[1]]


def test_an_edit_made_while_a_restore_loads_lands_in_the_restored_store(racing, tmp_path, monkeypatch):
    """`restore --force` builds beside the store and swaps: an edit acknowledged while it loaded went to the
    collections the swap left behind, and was gone. Edits now wait for the swap and land in the restored store."""
    from knnbe_qdrant.store import backup as backups

    store, encoder = racing
    curator = Curator(store, encoder)
    skill = next(iter(store.scroll(S.SKILLS, payload=True))).payload[S.F_SKILL_ID]
    backups.backup(store, tmp_path / "bk")
    loading, added = threading.Event(), threading.Event()
    write = backups._write

    def slow_write(target, collection, batch):  # the restore loading points, slowly enough for an edit to come
        loading.set()
        time.sleep(0.2)
        write(target, collection, batch)

    monkeypatch.setattr(backups, "_write", slow_write)

    def edit():
        loading.wait(30)
        curator.add_sentence("an edit made while the restore loaded", skill, tenant="acme")
        added.set()

    editor = threading.Thread(target=edit)
    editor.start()
    backups.restore(store, tmp_path / "bk", force=True)
    editor.join(30)
    assert added.is_set()
    texts = {p["text"] for p in curator.list_memory(skill, tenant="acme", own_only=True)}
    assert "an edit made while the restore loaded" in texts
