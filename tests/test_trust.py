"""Trust for multi-tenant live curation: racing writes apply in some order or one is refused, a tenant's deletion
and its edits never interleave, and what a curator or a library caller gives is checked as it was made. Each case
was a probe that failed on the code before it (issue 20). The rest of the trust suite: test_trust_service.py (one
caller's input or load fails or slows that caller alone), test_trust_batching.py (the map batcher's fairness and
workers), test_trust_rebuild.py (rebuilds, backups and restores lose no edit; damage is refused)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from knnbe_qdrant import ConflictError, Curator, InvalidInputError, SkillMapper
from knnbe_qdrant import _schema as S
from knnbe_qdrant.store.documents import FileDocuments
from tests.helpers import BACKENDS, race


# ---- racing writes: both apply in some order, or one is refused ------------------------------------------------
def test_two_curators_adding_one_skill_id_one_wins(racing):
    store, encoder = racing
    for round_ in range(5):
        outcomes = race(2, lambda i, r=round_: Curator(store, encoder, user=f"c{i}").add_skill(
            f"acme:race{r}", f"label {i}", tenant="acme"))
        assert sum(isinstance(o, dict) for o in outcomes) == 1, outcomes
        assert sum(isinstance(o, ConflictError) for o in outcomes) == 1, outcomes
        stored = [r.payload for r in store.scroll(S.SKILLS, where={S.F_SKILL_ID: f"acme:race{round_}"})]
        winner = next(o for o in outcomes if isinstance(o, dict))
        assert [p[S.F_LABEL] for p in stored] == [winner[S.F_LABEL]]


def test_racing_relabels_and_removals_leave_the_sentence_in_one_place(racing):
    store, encoder = racing
    curator = Curator(store, encoder)
    for round_ in range(4):
        text = f"Writing SQL reports for finance, round {round_}"
        curator.add_sentence(text, "SQL", tenant="acme")
        def edit(i, text=text):
            curator = Curator(store, encoder)
            if i == 2:
                return curator.remove_sentence(text, "SQL", tenant="acme")
            return curator.relabel(text, "SQL", ["PostgreSQL", "use databases"][i], tenant="acme")

        outcomes = race(3, edit)
        where = {S.F_TENANT: "acme", S.F_TEXT: text}
        held = [r.payload[S.F_SKILL_ID] for r in store.scroll(S.MEMORY, where=where)]
        done = [i for i, o in enumerate(outcomes) if not isinstance(o, Exception)]
        assert len(done) == 1, outcomes  # the first wins; the others find the sentence gone from under "SQL"
        assert len(held) == (0 if done[0] == 2 else 1), (outcomes, held)


def test_two_key_creations_with_one_name_give_one_secret(tmp_path):
    store = tmp_path / "docs"
    store.mkdir()
    code = ("import sys; from knnbe_qdrant.store.documents import FileDocuments; from knnbe_qdrant.service import "
            "KeyRing; from knnbe_qdrant import ConflictError\n"
            "try:\n KeyRing(FileDocuments(__import__('pathlib').Path(sys.argv[1]))).create(role='reader', "
            "tenant='acme', name='ops'); print('created')\nexcept ConflictError: print('refused')")
    for _ in range(6):
        (store / "keys.json").unlink(missing_ok=True)
        procs = [subprocess.Popen([sys.executable, "-c", code, str(store)], stdout=subprocess.PIPE) for _ in range(3)]
        outs = sorted(p.communicate()[0].decode().strip() for p in procs)
        assert outs == ["created", "refused", "refused"], outs
    assert list(FileDocuments(store).all("keys")) == ["ops"]


# ---- what a caller gives is checked as it was made ------------------------------------------------------------
def test_a_curators_user_set_after_it_is_made_is_checked_as_when_made(built_store, encoder):
    # Only the constructor checked the name: `curator.user = "knnbe-qdrant build"` was taken, and the sentences
    # written under it would be made anew from the sources by the next rebuild, so not carried (lost).
    curator = Curator(built_store, encoder, user="alice")
    for bad, words in (("knnbe-qdrant build", "reserved"), ("", "empty"), (None, "not a string"),
                       (" \x07 ", "empty")):
        with pytest.raises(InvalidInputError, match=words):
            curator.user = bad
    assert curator.user == "alice"
    curator.user = "bob@acme"
    assert curator.user == "bob@acme"


def test_library_texts_are_checked_before_the_tokenizer(built_store, encoder):
    mapper = SkillMapper(built_store, encoder)
    for bad in ("x \ud800", "\x00", "\x07 \x1b"):
        with pytest.raises(InvalidInputError, match="sentence #1"):
            mapper.map(["fine", bad])


# ---- a server store's item locks ------------------------------------------------------------------------------
def test_a_lease_on_a_server_store_has_one_holder_at_a_time_and_expires_when_its_holder_dies(built_stores,
                                                                                              monkeypatch):
    """The lease a server store uses for item locks, on qdrant-client's local mode (which implements the same
    conditional upsert): six threads contend for one item, never two inside; a holder that died frees it after
    the lease time."""
    from knnbe_qdrant.store import locks

    store = built_stores["qdrant-local"]
    inside: list[int] = []
    overlaps: list[list[int]] = []

    def hold(i):
        with locks.lease(store, ("skill", "acme", "leased")):
            inside.append(i)
            if len(inside) > 1:
                overlaps.append(list(inside))
            time.sleep(0.02)
            inside.remove(i)

    race(6, hold)
    assert not overlaps, overlaps
    monkeypatch.setattr(locks, "LEASE_S", 0.2)
    dead = locks.lease(store, ("skill", "acme", "orphan"))
    dead.__enter__()  # acquired, never released: its process died
    with pytest.raises(ConflictError), locks.lease(store, ("skill", "acme", "orphan"), wait=0.05):
        pass
    started = time.monotonic()
    with locks.lease(store, ("skill", "acme", "orphan"), wait=5):
        assert time.monotonic() - started < 2


# ---- a tenant's deletion and its edits: nothing begun before the deletion lands after it -----------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_an_import_running_while_its_tenant_is_deleted_stops_and_leaves_nothing(backend, built_stores, encoder,
                                                                                small_skills):
    """Before the fence, the import's later chunks made the deleted tenant anew: 2,488 of 3,000 rows were there
    after `delete_tenant` had answered."""
    store, tenant = built_stores[backend], f"gone-{backend}"
    curator = Curator(store, encoder)
    skill = small_skills[0].id
    rows = [(i, {"text": f"{tenant} posting line {i} about forklift trucks", "skill": skill}, None)
            for i in range(1, 401)]
    outcome: list[object] = []

    def importing():
        try:
            outcome.append(curator.import_rows(rows, "rows", tenant=tenant, source="test", chunk=16))
        except ConflictError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=importing)
    worker.start()
    deadline = time.monotonic() + 60
    while not store.count(S.MEMORY, where={S.F_TENANT: tenant}) and time.monotonic() < deadline:
        time.sleep(0.01)
    curator.delete_tenant(tenant)
    worker.join(60)
    [result] = outcome
    assert isinstance(result, ConflictError), result
    assert f"tenant {tenant!r} was deleted while the import of rows ran" in str(result)
    assert store.count(S.MEMORY, where={S.F_TENANT: tenant}) == 0
    assert tenant not in curator.tenants()


def test_an_import_whose_tenant_is_deleted_before_its_audit_entry_leaves_no_entry_in_a_new_log(racing, tmp_path,
                                                                                              monkeypatch):
    """`memory import` writes its audit entry after the import, whose writes alone hold the fence: a deletion in
    between gave the deleted tenant's new log the entry of rows it no longer had. The entry goes to the admins' log,
    saying so."""
    import argparse

    from knnbe_qdrant.cli.curation import memory_import
    from knnbe_qdrant.store.documents import AUDIT, tenant_audit

    store, encoder = racing
    curator = Curator(store, encoder, user="tester")
    rows = tmp_path / "rows.jsonl"
    skill = next(iter(store.scroll(S.SKILLS, payload=True))).payload[S.F_SKILL_ID]
    rows.write_text("".join(json.dumps({"text": f"late row {i} about pallets", "skill": skill}) + "\n"
                            for i in range(3)), encoding="utf-8")
    imported = curator.import_file

    def import_then_deleted(*args, **kwargs):
        report = imported(*args, **kwargs)
        curator.delete_tenant("late")
        return report

    monkeypatch.setattr(curator, "import_file", import_then_deleted)
    args = argparse.Namespace(hf=False, file=str(rows), tenant="late", source=None, no_progress=True)
    assert memory_import(curator, args) == 0
    documents = store.documents()
    assert documents.tail(tenant_audit("late"), 10) == [] and "late" not in curator.tenants()
    entry = documents.tail(AUDIT, 1)[0]
    assert entry["action"] == "memory import" and entry["tenant_deleted_since"] == "late" and entry["stored"] == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_deletion_waits_for_an_edit_under_way_and_edits_wait_for_a_deletion(backend, built_stores, encoder,
                                                                             small_memory):
    """An edit in the middle of its writes (here: a sentence added and a global one hidden, as a relabel of a
    global sentence does) finishes before the deletion sweeps; an edit that comes during a deletion lands after
    it. Without the fence, a hide mark set after the deletion's sweep stayed, and a tenant made later under the
    name inherited it."""
    store, tenant = built_stores[backend], f"fenced-{backend}"
    curator = Curator(store, encoder)
    globals_ = small_memory[:2]
    deleted = threading.Event()
    with curator.editing(tenant):  # the edit under way, between its writes
        curator.add_sentence("our own sentence about pallets", globals_[0].skill_id, tenant=tenant)
        deleter = threading.Thread(target=lambda: (curator.delete_tenant(tenant), deleted.set()))
        deleter.start()
        time.sleep(0.3)
        assert not deleted.is_set(), "the deletion went ahead while an edit of the tenant was under way"
        assert curator.remove_sentence(globals_[1].text, globals_[1].skill_id, tenant=tenant) == "hidden"
    deleter.join(30)
    assert deleted.is_set()
    assert tenant not in curator.tenants()
    assert not list(store.scroll(S.MEMORY, where={S.hide_key(tenant): tenant}, payload=False))

    with store.tenant_deletion(tenant):  # a deletion under way: an edit that comes now waits for its end
        added = threading.Thread(target=curator.add_sentence, args=("after the deletion", globals_[0].skill_id),
                                 kwargs={"tenant": tenant})
        added.start()
        time.sleep(0.3)
        assert added.is_alive() and not store.count(S.MEMORY, where={S.F_TENANT: tenant})
    added.join(30)
    assert store.count(S.MEMORY, where={S.F_TENANT: tenant}) == 1
    curator.delete_tenant(tenant)


def test_the_fences_on_a_server_store_exclude_edits_from_a_deletion_and_a_rebuild(built_stores, monkeypatch):
    """The fences as server stores hold them across processes (edits' leases and fence points in the meta
    collection), on qdrant-client's local mode: a deletion waits for a live edit of its tenant (not of another), an
    edit for a deletion or a rebuild's pause; each deletion moves the epoch on; an edit or a fence holder that died
    holds nothing once its lease runs out, and a fence held longer than a lease is renewed."""
    from knnbe_qdrant.store import fences, locks

    store, tenant = built_stores["qdrant-local"], "leased-tenant"
    with fences.lease_edit(store, tenant) as epoch:
        with fences.lease_edit(store, tenant) as again:  # re-entrant: the same thread, the same hold
            assert again == epoch
        with pytest.raises(ConflictError, match="edits under way"), fences.lease_tenant_deletion(store, tenant,
                                                                                                   wait=0.2):
            pass
        with pytest.raises(ConflictError, match="edits under way"), fences.lease_alone(store, fences.ALL, wait=0.2):
            pass
        with fences.lease_tenant_deletion(store, "another-tenant", wait=1):  # not this edit's business
            pass
    with fences.lease_edit(store, tenant) as unchanged:  # the refused deletion moved nothing
        assert unchanged == epoch

    def edit_in_another_thread(name):
        outcome: list[object] = []

        def write():
            try:
                with fences.lease_edit(store, name, wait=0.2) as e:
                    outcome.append(e)
            except ConflictError as exc:
                outcome.append(exc)

        other = threading.Thread(target=write)  # another thread: this one's holds are not its
        other.start()
        other.join(10)
        return outcome[0]

    with fences.lease_tenant_deletion(store, tenant):
        assert "being deleted" in str(edit_in_another_thread(tenant))
        assert edit_in_another_thread("bystander") == 0  # another tenant edits on
    with fences.lease_edit(store, tenant) as after:
        assert after == epoch + 1
    monkeypatch.setattr(locks, "LEASE_S", 0.3)
    with fences.lease_alone(store, fences.ALL):
        time.sleep(1.0)  # three leases long: renewed, still closed
        assert "being rebuilt" in str(edit_in_another_thread(None))
        assert "being rebuilt" in str(edit_in_another_thread(tenant))
    assert edit_in_another_thread(None) == 0
    with fences.lease_edit(store, tenant):  # an edit slower than three leases: renewed, it still holds deletions
        time.sleep(1.0)
        with pytest.raises(ConflictError, match="edits under way"), fences.lease_tenant_deletion(store, tenant,
                                                                                                   wait=0.3):
            pass
    real_call = store._call

    def call(fn, *args, **kwargs):  # a dead process renews nothing: its renewal thread's writes go nowhere
        if threading.current_thread().name == "edit lease renewal":
            raise ConnectionError("the process is gone")
        return real_call(fn, *args, **kwargs)

    monkeypatch.setattr(store, "_call", call)
    dying = threading.Thread(target=lambda: fences.lease_edit(store, tenant).__enter__())
    dying.start()  # its process dies inside an edit: the edit's lease stays, never released
    dying.join(10)
    started = time.monotonic()
    with fences.lease_tenant_deletion(store, tenant, wait=5):
        assert time.monotonic() - started < 3


def test_tenants_whose_names_differ_only_in_case_have_their_own_audit_files(racing, tmp_path):
    # Tenants "Acme" and "acme" are two, and their logs were files audit@Acme.jsonl and audit@acme.jsonl: one file
    # on the file systems macOS and Windows use by default, where each read the other's edits and the deletion of
    # one removed the other's history. No two of a store's document files may be one name but for case.
    from knnbe_qdrant import Curator, EdgeStore
    from knnbe_qdrant.store.backup import backup, restore
    from knnbe_qdrant.store.document_files import is_document_file
    from knnbe_qdrant.store.documents import FileDocuments, record_edit, tenant_audit

    store, encoder = racing
    curator = Curator(store, encoder)
    for tenant in ("Acme", "acme", "ACME"):
        curator.add_sentence(f"{tenant} writes SQL every day", "SQL", tenant=tenant)
        record_edit(store.documents(), tenant, "test", "memory add", text=f"{tenant} writes SQL every day")
    documents = store.documents()
    if isinstance(documents, FileDocuments):
        names = [p.name for p in documents.root.iterdir() if is_document_file(p.name)]
        assert len({n.casefold() for n in names}) == len(names), names
    for tenant in ("Acme", "acme", "ACME"):
        assert [e["text"] for e in documents.entries(tenant_audit(tenant))] == [f"{tenant} writes SQL every day"]
    backup(store, tmp_path / "bk")
    curator.delete_tenant("acme")
    assert not documents.entries(tenant_audit("acme"))
    assert [e["text"] for e in documents.entries(tenant_audit("Acme"))] == ["Acme writes SQL every day"]
    target = EdgeStore(tmp_path / "restored", create=True)
    try:
        restore(target, tmp_path / "bk")
        restored = target.documents()
        for tenant in ("Acme", "acme", "ACME"):
            assert [e["text"] for e in restored.entries(tenant_audit(tenant))] == [f"{tenant} writes SQL every day"]
    finally:
        target.close()


def test_a_tenants_log_written_under_its_name_as_it_was_is_read_and_moved_to_its_case_safe_name(tmp_path):
    from knnbe_qdrant.store.documents import FileDocuments, tenant_audit

    (tmp_path / "audit@Acme.jsonl").write_text('{"tenant": "Acme", "action": "memory add", "text": "old"}\n',
                                               encoding="utf-8")
    documents = FileDocuments(tmp_path)
    assert documents.logs() == [tenant_audit("Acme")]
    assert [e["text"] for e in documents.tail(tenant_audit("Acme"), 10)] == ["old"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".jsonl") == ["audit@^acme.jsonl"]
    documents.append(tenant_audit("Acme"), {"tenant": "Acme", "action": "memory add", "text": "new"})
    assert [e["text"] for e in documents.entries(tenant_audit("Acme"))] == ["old", "new"]
    assert documents.logs() == [tenant_audit("Acme")] and not documents.entries(tenant_audit("acme"))
