"""Which files an embedded store's documents (documents.FileDocuments) live in, and which names in its directory
are theirs.

A kind of documents is a file `<stem>.json` (a keyed set) or `<stem>.jsonl` (a log). A tenant's audit log is the
kind `audit@<tenant>`, and tenants' names are case-sensitive ("Acme" and "acme" are two tenants), where the file
systems of macOS and Windows by default are not: both tenants wrote, read and, on a deletion, removed one file. So
the stem writes each upper-case letter as "^" and the letter in lower case ("audit@^acme"), which no tenant's name
holds: two kinds never share a file, whatever the file system.
"""

from __future__ import annotations

import re

from .._schema import is_tenant_name

FILES = ("keys.json", "hiders.json", "removed.json", "audit.jsonl", "audit_split.json", ".documents.lock")
"""What FileDocuments may leave in a store directory besides the store itself (and the tenants' audit logs:
`is_document_file`)."""
AUDIT = "audit"
"""The audit log of every edit, which admins read."""


def file_stem(kind: str) -> str:
    return re.sub("[A-Z]", lambda m: "^" + m.group().lower(), kind)


def kind_of(stem: str) -> str:
    return re.sub(r"\^([a-z])", lambda m: m.group(1).upper(), stem)


def is_document_file(name: str) -> bool:
    """One of FILES, or a tenant's audit log (its name by the schema's rule for tenants' names), by its file name
    or, as a backup names it, its kind: `audit@^acme.jsonl`, `audit@Acme.jsonl` (a log written before file names
    were made case-safe, which FileDocuments renames when it next reads it)."""
    if name in FILES:
        return True
    stem = name.removesuffix(".jsonl")
    rest = stem.removeprefix(f"{AUDIT}@")
    tenant = kind_of(rest)
    return (name.endswith(".jsonl") and stem != rest and rest in (file_stem(tenant), tenant)
            and is_tenant_name(tenant))
