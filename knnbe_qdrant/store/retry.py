"""Retrying transient faults of a Qdrant server, and only those (tenacity).

Transient: the connection refused or reset, a timeout, HTTP 429/502/503/504 (Retry-After honoured), gRPC
UNAVAILABLE / RESOURCE_EXHAUSTED / DEADLINE_EXCEEDED. Everything else (a 400, a 404, a 409...) is the caller's
mistake and is raised at once. Attempts and total time are bounded. Every write the store makes is idempotent
(deterministic point ids), so a retried write cannot duplicate.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, stop_after_delay
from tenacity.wait import wait_exponential, wait_random

T = TypeVar("T")
log = logging.getLogger("knnbe_qdrant.retry")
TRANSIENT_HTTP = {429, 502, 503, 504}
_GRPC_TRANSIENT = {"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    """Tries in all, the first included."""
    max_seconds: float = 30.0
    """No new try starts after this long."""
    initial_wait: float = 0.2
    max_wait: float = 5.0

    @classmethod
    def from_env(cls) -> RetryPolicy:
        return cls(
            attempts=int(os.environ.get("KNNBE_RETRY_ATTEMPTS", cls.attempts)),
            max_seconds=float(os.environ.get("KNNBE_RETRY_SECONDS", cls.max_seconds)),
        )


def _root(exc: BaseException) -> BaseException:
    return exc.source if isinstance(exc, ResponseHandlingException) and exc.source is not None else exc


def is_transient(exc: BaseException) -> bool:
    exc = _root(exc)
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code in TRANSIENT_HTTP
    if isinstance(exc, (httpx.TransportError, ConnectionError, TimeoutError)):
        return True
    if type(exc).__name__ == "ResourceExhaustedResponse":  # qdrant-client's 429 with retry_after_s
        return True
    code = getattr(exc, "code", None)  # grpc.RpcError, without importing grpc
    if callable(code):
        try:
            return getattr(code(), "name", "") in _GRPC_TRANSIENT
        except Exception:
            return False
    return False


def retry_after(exc: BaseException | None) -> float | None:
    """Seconds the server asked us to wait (Retry-After on 429/503), if it did."""
    exc = _root(exc) if exc is not None else None
    seconds = getattr(exc, "retry_after_s", None)
    if seconds is not None:
        return float(seconds)
    headers = getattr(exc, "headers", None)
    if isinstance(exc, UnexpectedResponse) and headers is not None:
        value = headers.get("retry-after")
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None  # an HTTP date: fall back to the backoff
    return None


class _Wait:
    def __init__(self, policy: RetryPolicy) -> None:
        # Exponential backoff plus up to a second of jitter, the same as tenacity's wait_exponential_jitter, whose
        # spelling of the first wait changed between tenacity 8 and 9.2 (`initial` was deprecated for `multiplier`).
        self.backoff = wait_exponential(multiplier=policy.initial_wait, max=policy.max_wait) + wait_random(0, 1)
        self.policy = policy

    def __call__(self, state: RetryCallState) -> float:
        asked = retry_after(state.outcome.exception() if state.outcome else None)
        if asked is not None:
            return min(asked, self.policy.max_seconds)
        return min(self.backoff(state), self.policy.max_wait)


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.warning(
        "transient Qdrant fault (%s: %s); try %d failed, retrying in %.2f s",
        type(_root(exc)).__name__ if exc else "?", str(_root(exc))[:120] if exc else "", state.attempt_number,
        state.next_action.sleep if state.next_action else 0.0,
    )


def call_with_retries(policy: RetryPolicy, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    retrying = Retrying(
        retry=retry_if_exception(is_transient),
        stop=stop_after_attempt(policy.attempts) | stop_after_delay(policy.max_seconds),
        wait=_Wait(policy),
        before_sleep=_log_retry,
        reraise=True,
    )
    return retrying(fn, *args, **kwargs)
