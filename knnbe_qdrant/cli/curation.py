"""Commands that edit the store live, per tenant: memory (sentences), skill, tenant."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import _schema as S
from .._errors import StoreError
from .._tenancy import is_tenant
from ..store.documents import TENANT_DELETE, record_edit, split_tenant_audit
from ._common import index_new_points, open_curator

if TYPE_CHECKING:
    from .._curation import Curator

_TENANT_HELP = "the tenant whose layer is edited (default: the global layer)"


CuratorCommand = Callable[["Curator", argparse.Namespace], int]


def _action(
    actions: Any, parent: argparse.ArgumentParser, name: str, help_: str, func: CuratorCommand, *, edit: bool = True
) -> argparse.ArgumentParser:
    """A command on one tenant's layer; an `edit` holds the tenant's fence across the edit and its audit entry (as
    the service does), so that a deletion of the tenant is wholly before or after both."""
    p: argparse.ArgumentParser = actions.add_parser(name, parents=[parent], help=help_)
    p.add_argument("--tenant", help=_TENANT_HELP)
    p.add_argument("--user", help="who makes the change, for provenance (env KNNBE_USER; default: login name)")
    p.set_defaults(func=_with_curator(func, edit=edit))
    return p


def _with_curator(func: CuratorCommand, *, edit: bool = False) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        curator = open_curator(args)
        with curator.store, curator.editing(args.tenant) if edit else contextlib.nullcontext(0):
            return func(curator, args)

    return run


def _recorded(curator: Curator, tenant: str | None, action: str, **details: Any) -> None:
    """The edit in the audit logs, as the service records its own: a curator's edits from the command line show in
    `GET /v1/audit` too, under `cli:<user>`."""
    documents = curator.store.documents()
    split_tenant_audit(documents, curator.tenants)  # a store from before the tenants' logs gets them first
    record_edit(documents, tenant if is_tenant(tenant) else None, f"cli:{curator.user}", action, **details)


def register(sub: Any, parent: argparse.ArgumentParser) -> None:
    mem = sub.add_parser("memory", help="curate the memory: add, remove, reinstate, relabel, list, import, export")
    actions = mem.add_subparsers(dest="action", required=True)
    p = _action(actions, parent, "add", "add a labelled sentence", memory_add)
    p.add_argument("--skill", required=True, help="skill id or exact preferred label")
    p.add_argument("--text", required=True)
    p.add_argument("--source", default="curator")
    p = _action(actions, parent, "remove", "remove a sentence (a tenant hides a global one for itself)", memory_remove)
    p.add_argument("--skill", required=True)
    p.add_argument("--text", required=True)
    p = _action(actions, parent, "reinstate", "a tenant shows a global sentence it hid again", memory_reinstate)
    p.add_argument("--skill", required=True)
    p.add_argument("--text", required=True)
    p = _action(actions, parent, "relabel", "move a sentence to another skill (no re-encoding)", memory_relabel)
    p.add_argument("--skill", required=True, help="its skill now")
    p.add_argument("--text", required=True)
    p.add_argument("--to", required=True, help="its new skill")
    p = _action(actions, parent, "list", "the sentences of a skill, with provenance", memory_list, edit=False)
    p.add_argument("--skill", help="skill id or exact preferred label (default: all; can be long)")
    p.add_argument("--own", action="store_true", help="only the tenant's own sentences")
    p.add_argument("--json", action="store_true")
    p = _action(actions, parent, "import", "add the labelled sentences of a JSONL or CSV file (text, skill[, source]), "
                "or of a Hugging Face dataset with --hf", memory_import, edit=False)  # its writes hold the fence
    p.add_argument("file", help="the file; with --hf a dataset name (needs internet) or local dataset directory")
    p.add_argument("--hf", action="store_true", help="FILE names a Hugging Face dataset, e.g. "
                   "TechWolf/Synthetic-ESCO-skill-sentences (needs the datasets extra)")
    p.add_argument("--split", default="train", help="with --hf: the split (default train)")
    p.add_argument("--text-column", default="sentence", help="with --hf: the sentence column (default sentence)")
    p.add_argument("--skill-column", default="skill", help="with --hf: the skill column, ids or preferred labels "
                   "(default skill)")
    p.add_argument("--source", help="source recorded for rows without one (default: import:FILENAME)")
    p.add_argument("--no-progress", action="store_true")
    p = _action(actions, parent, "export", "write the tenant's own sentences to JSONL (or CSV by suffix)",
                memory_export, edit=False)
    p.add_argument("file")
    p.add_argument("--skill")

    sk = sub.add_parser("skill", help="curate skills: add, update, retire, reinstate, list")
    actions = sk.add_subparsers(dest="action", required=True)
    p = _action(actions, parent, "add", "add a skill the taxonomy lacks", skill_add)
    p.add_argument("--id", required=True, dest="skill_id")
    p.add_argument("--label", required=True)
    p.add_argument("--description", default="")
    p = _action(actions, parent, "update", "change a skill's label or description (a new label re-encodes that "
                "skill)", skill_update)
    p.add_argument("skill", help="skill id or exact preferred label")
    p.add_argument("--label")
    p.add_argument("--description")
    _revision_argument(p)
    p = _action(actions, parent, "retire", "never return a skill again (a tenant hides a global skill for itself)",
                skill_retire)
    p.add_argument("skill")
    _revision_argument(p)
    p = _action(actions, parent, "reinstate", "undo a retirement (a tenant shows a global skill it hid again)",
                skill_reinstate)
    p.add_argument("skill", help="skill id or exact preferred label")
    _revision_argument(p)
    p = _action(actions, parent, "list", "skills visible to the tenant", skill_list, edit=False)
    p.add_argument("--own", action="store_true", help="only the tenant's own skills")
    p.add_argument("--json", action="store_true")

    te = sub.add_parser("tenant", help="list or delete tenants")
    actions = te.add_subparsers(dest="action", required=True)
    p = actions.add_parser("list", parents=[parent], help="tenants and their own point counts")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_with_curator(tenant_list))
    p = actions.add_parser("delete", parents=[parent], help="remove exactly this tenant's data and revoke its API keys")
    p.add_argument("tenant")
    p.set_defaults(func=_with_curator(tenant_delete))


# ---- memory ---------------------------------------------------------------------------------------------------
def memory_add(curator: Curator, args: argparse.Namespace) -> int:
    added = curator.add_sentence(args.text, args.skill, tenant=args.tenant, source=args.source)
    if added:
        _recorded(curator, args.tenant, "memory add", skill=args.skill, text=args.text)
    print("added" if added else "already stored")
    return 0


def memory_remove(curator: Curator, args: argparse.Namespace) -> int:
    outcome = curator.remove_sentence(args.text, args.skill, tenant=args.tenant)
    _recorded(curator, args.tenant, f"memory {outcome}", skill=args.skill, text=args.text)
    print(outcome)
    return 0


def memory_reinstate(curator: Curator, args: argparse.Namespace) -> int:
    outcome = curator.reinstate_sentence(args.text, args.skill, tenant=args.tenant)
    if outcome != "already active":
        _recorded(curator, args.tenant, f"memory {outcome}", skill=args.skill, text=args.text)
    print(outcome)
    return 0


def memory_relabel(curator: Curator, args: argparse.Namespace) -> int:
    outcome = curator.relabel(args.text, args.skill, args.to, tenant=args.tenant)
    if outcome == "relabelled":
        _recorded(curator, args.tenant, "memory relabel", skill=args.skill, to=args.to, text=args.text)
    print(outcome)
    return 0


def memory_list(curator: Curator, args: argparse.Namespace) -> int:
    for p in curator.list_memory(args.skill, tenant=args.tenant, own_only=args.own):
        if args.json:
            print(json.dumps(p, ensure_ascii=False))
        else:
            print(f"{p.get('skill_id')}\t{p.get('tenant')}\t{p.get('source')}\t{p.get('created_by', '')}\t"
                  f"{p.get('created_at', '')}\t{p.get('text')}")
    return 0


def memory_import(curator: Curator, args: argparse.Namespace) -> int:
    if args.hf:
        report = curator.import_hf(args.file, split=args.split, text_column=args.text_column,
                                   skill_column=args.skill_column, tenant=args.tenant, source=args.source,
                                   progress=not args.no_progress)
    else:
        report = curator.import_file(args.file, tenant=args.tenant, source=args.source, progress=not args.no_progress)
    if report.stored:
        # Under the fence, as every edit's entry: an import is many edits, so it holds the fence only while it writes.
        # Its tenant deleted since it ended took its rows and must not get this entry in a new log.
        with curator.editing(args.tenant) as epoch:
            gone = {} if epoch == report.epoch else {"tenant_deleted_since": args.tenant}
            _recorded(curator, None if gone else args.tenant, "memory import", file=args.file,
                      stored=report.stored, bad_rows=len(report.errors), **gone)
    for error in report.errors:
        print(error, file=sys.stderr)
    print(f"stored {report.stored}, already stored {report.already_stored}, bad rows {len(report.errors)}")
    try:
        index_new_points(curator.store)
    except StoreError as exc:  # the rows are stored: only their index waits
        print(f"warning: {exc}; run `knnbe-qdrant index` then", file=sys.stderr)
    return 1 if report.errors else 0


def memory_export(curator: Curator, args: argparse.Namespace) -> int:
    print(f"wrote {curator.export(args.file, tenant=args.tenant, skill=args.skill)} sentences to {args.file}")
    return 0


# ---- skills ---------------------------------------------------------------------------------------------------
def _revision_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--revision", type=int, help="the skill's revision as you read it (`skill list`): refused if "
                   "another edit of the skill came first")


def skill_add(curator: Curator, args: argparse.Namespace) -> int:
    added = curator.add_skill(args.skill_id, args.label, description=args.description, tenant=args.tenant)
    if added.changed:
        _recorded(curator, args.tenant, "skill add", skill=args.skill_id, label=args.label,
                  revision=added[S.F_REVISION])
    print(f"{'added' if added.changed else 'already added'} {args.skill_id} (revision {S.revision_of(added)})")
    return 0


def skill_update(curator: Curator, args: argparse.Namespace) -> int:
    done = curator.update_skill(args.skill, label=args.label, description=args.description, revision=args.revision,
                                tenant=args.tenant)
    if done.changed:
        _recorded(curator, args.tenant, "skill update", skill=args.skill, **done.asked, revision=done[S.F_REVISION])
    print(f"{'updated' if done.changed else 'unchanged'} (revision {S.revision_of(done)})")
    return 0


def skill_retire(curator: Curator, args: argparse.Namespace) -> int:
    outcome = curator.retire_skill(args.skill, revision=args.revision, tenant=args.tenant)
    if outcome.changed:
        _recorded(curator, args.tenant, f"skill {outcome}", skill=args.skill, revision=outcome.revision)
    print(f"{outcome} (revision {outcome.revision})")
    return 0


def skill_reinstate(curator: Curator, args: argparse.Namespace) -> int:
    outcome = curator.reinstate_skill(args.skill, revision=args.revision, tenant=args.tenant)
    if outcome.changed:
        _recorded(curator, args.tenant, f"skill {outcome}", skill=args.skill, revision=outcome.revision)
    print(f"{outcome} (revision {outcome.revision})")
    return 0


def skill_list(curator: Curator, args: argparse.Namespace) -> int:
    for p in curator.list_skills(tenant=args.tenant, own_only=args.own):
        if args.json:
            print(json.dumps(p, ensure_ascii=False))
        else:
            print(f"{p['skill_id']}\t{p['tenant']}\t{p['label']}\trevision {p['revision']}")
    return 0


# ---- tenants --------------------------------------------------------------------------------------------------
def tenant_list(curator: Curator, args: argparse.Namespace) -> int:
    tenants = curator.tenants()
    if args.json:
        print(json.dumps(tenants))
    else:
        for name, counts in tenants.items():
            print(f"{name}\tskills {counts['skills']}\tmemory {counts['memory']}\thidden {counts['hidden']}")
    return 0


def tenant_delete(curator: Curator, args: argparse.Namespace) -> int:
    revoked = curator.delete_tenant(args.tenant)
    _recorded(curator, None, TENANT_DELETE, tenant_deleted=args.tenant, keys_revoked=revoked)
    print(f"deleted tenant {args.tenant}" + (f"; revoked its keys {', '.join(revoked)}" if revoked else ""))
    return 0
