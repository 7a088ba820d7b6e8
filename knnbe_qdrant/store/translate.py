"""Our filters, payload choices and points in the terms of Qdrant's two Python APIs (qdrant-client's models and
Qdrant Edge's), which name these things alike: the translation both backends share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .base import Record, Value, Where, WhereLike


def as_values(value: Value) -> list:
    return [value] if isinstance(value, (str, bool)) else list(value)


def build_filter(where: WhereLike | None, api: Any) -> Any:
    """`where` as a Qdrant filter, built with `api`: qdrant_edge or qdrant_client.models, which name the filter
    classes and their fields alike."""
    if not where:
        return None
    if not isinstance(where, Where):
        where = Where(must=where)

    def conditions(fields: Mapping[str, Value]) -> list:
        out = []
        for key, value in fields.items():
            values = as_values(value)
            match = api.MatchValue(value=values[0]) if len(values) == 1 else api.MatchAny(any=values)
            out.append(api.FieldCondition(key=key, match=match))
        return out

    return api.Filter(must=conditions(where.must) or None, must_not=conditions(where.must_not) or None)


def payload_selector(payload: bool | Sequence[str]) -> bool | list[str]:
    return payload if isinstance(payload, bool) else list(payload)


def to_record(point: Any, with_vectors: bool) -> Record:
    """A backend's retrieved point (anything with id, payload, vector) as a Record."""
    vector = np.asarray(point.vector, dtype=np.float32) if with_vectors else None
    return Record(id=str(point.id), payload=dict(point.payload or {}), vector=vector)
