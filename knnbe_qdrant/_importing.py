"""Bulk import of labelled sentences into the memory: rows streamed in chunks, each bad row reported by its line
and skipped, every good one stored once (point ids are deterministic, so a re-run stores only what is missing).
`Curator.import_file`, `import_hf` and `import_rows` are the way in."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from . import _schema as S
from ._build import TextPoint, memory_payload, upsert_missing
from ._data import LabelledSentence
from ._errors import ConflictError, KnnbeError, QuotaExceededError, StoreError
from ._labelled import row_problem
from ._quota import Quota, room_for
from ._tenancy import marks_of_removed
from ._text import normalized
from .encoding import Encoder
from .store.base import Store


class _TenantDeleted(ConflictError):
    """The import's tenant was deleted while it ran: it stops, and says so (running it again is not the answer)."""


@dataclass
class ImportReport:
    stored: int = 0
    already_stored: int = 0
    errors: list[str] = field(default_factory=list)
    epoch: int = 0  # the tenant's when the import began: a later deletion of the tenant moves it on (store.fences)


def store_rows(store: Store, encoder: Callable[[], Encoder], resolve: Callable[[str], str],
               provenance: Callable[[str], dict[str, Any]], rows: Iterable[tuple[int, dict[str, str], str | None]],
               origin: str, *, owner: str, source: str, progress: bool, chunk: int,
               fence: Callable[[], AbstractContextManager[int]], quota: Quota | None = None) -> ImportReport:
    """Store (line number, {text, skill[, source]}, problem) rows in `owner`'s layer, skill references resolved by
    `resolve` (once each) and the model loaded (by `encoder`) only if a row is stored. Each write holds the tenant's
    `fence`; when the tenant is deleted while the import runs, it stops (ConflictError) rather than make the tenant
    anew with the rows that come after the deletion. Each write fits the tenant's `quota`, or the import stops there
    (QuotaExceededError, saying how many rows it stored)."""
    report = ImportReport()
    resolved: dict[str, str | Exception] = {}
    batch: dict[str, TextPoint] = {}
    now = S.utc_now()
    with fence() as started:
        report.epoch = started
    # A global sentence removed once and imported again stays hidden from the tenants that had hidden it.
    removed = store.documents().all(S.TOMBSTONES) if owner == S.GLOBAL_TENANT else {}

    @contextlib.contextmanager
    def same_tenant(adding: int) -> Iterator[None]:
        with fence() as epoch:
            if epoch != started:
                raise _TenantDeleted(f"tenant {owner!r} was deleted while the import of {origin} ran: it stopped "
                                    f"after storing {report.stored} rows, which the deletion removed")
            with room_for(store, quota, owner, S.MEMORY, adding):
                yield

    def flush() -> None:
        written = upsert_missing(store, S.MEMORY, list(batch.values()), encoder(), progress=False, desc="import",
                                 guard=same_tenant)
        report.stored += written
        report.already_stored += len(batch) - written
        batch.clear()

    def skill_of(ref: str) -> str | Exception:
        if ref not in resolved:
            try:
                resolved[ref] = resolve(ref)
            except KnnbeError as exc:
                resolved[ref] = exc
        return resolved[ref]

    try:
        with tqdm(desc="import", unit="row", disable=not progress) as bar:
            for line_no, row, read_problem in rows:
                bar.update(1)
                text, ref = normalized(row.get("text") or ""), normalized(row.get("skill") or "")
                problem = read_problem or ("empty 'text'" if not text else "empty 'skill'" if not ref else
                                           row_problem(text, ref, row.get("source") or ""))
                skill_id = skill_of(ref) if problem is None else None
                if problem or isinstance(skill_id, Exception) or skill_id is None:
                    report.errors.append(f"{origin}:{line_no}: {problem or skill_id}")
                    continue
                row_source = (row.get("source") or "").strip() or source
                point = S.memory_point_id(owner, skill_id, text)
                payload = {**memory_payload(LabelledSentence(text, skill_id, row_source), owner, now),
                           **provenance(row_source), **marks_of_removed(removed, point)}
                batch[point] = TextPoint(point, text, payload)
                if len(batch) >= chunk:
                    flush()
            if batch:
                flush()
    except _TenantDeleted:
        raise
    except QuotaExceededError as exc:
        raise QuotaExceededError(f"import of {origin} stopped after storing {report.stored} rows "
                                 f"({report.already_stored} were already stored, {len(report.errors)} bad): {exc}. "
                                 "Nothing of the chunk that did not fit was stored.") from exc
    except ConflictError as exc:  # a fence held too long (a rebuild's carry): nothing is wrong with the rows
        raise ConflictError(f"import of {origin} stopped after storing {report.stored} rows ({report.already_stored} "
                            f"were already stored, {len(report.errors)} bad): {exc}. Run the same import again to "
                            "store the rest.") from exc
    except (KnnbeError, OSError) as exc:
        raise StoreError(f"import of {origin} stopped after storing {report.stored} rows "
                         f"({report.already_stored} were already stored, {len(report.errors)} bad): {exc}. "
                         "Run the same import again to store the rest.") from exc
    return report
