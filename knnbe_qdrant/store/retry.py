"""Retrying transient faults of a Qdrant server, and only those (tenacity).

Transient: the connection refused or reset, a timeout, HTTP 429/502/503/504 (Retry-After honoured), gRPC
UNAVAILABLE / RESOURCE_EXHAUSTED / DEADLINE_EXCEEDED. Everything else (a 400, a 404, a 409...) is the caller's
mistake and is raised at once. Attempts and total time are bounded. Every write the store makes is idempotent
(deterministic point ids), so a retried write cannot duplicate.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, stop_before_delay
from tenacity.wait import wait_exponential, wait_random

from .._errors import KnnbeError

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
    log.info(  # info, not warning: a command prints one line when it finally fails, not one per try
        "transient Qdrant fault (%s: %s); try %d failed, retrying in %.2f s",
        type(_root(exc)).__name__ if exc else "?", str(_root(exc))[:120] if exc else "", state.attempt_number,
        state.next_action.sleep if state.next_action else 0.0,
    )


def call_with_retries(policy: RetryPolicy, fn: Callable[..., T], *args: Any, deadline: float | None = None,
                      **kwargs: Any) -> T:
    """fn(*args, **kwargs), retried per `policy`; with a `deadline` (seconds), the whole call, retries and waits
    included, ends by then: an attempt still running is abandoned with TimeoutError."""
    limit = policy.max_seconds if deadline is None else min(policy.max_seconds, deadline)
    retrying = Retrying(
        retry=retry_if_exception(is_transient),
        # Before, not after: no attempt starts that the wait before it would push past the limit.
        stop=stop_after_attempt(policy.attempts) | stop_before_delay(limit),
        wait=_Wait(policy),
        before_sleep=_log_retry,
        reraise=True,
    )
    if deadline is None:
        return retrying(fn, *args, **kwargs)
    ends = time.monotonic() + deadline
    return retrying(lambda: _before(ends, fn, args, kwargs))


class DeadlineExceeded(KnnbeError, TimeoutError):
    """An attempt still running when the call's deadline came (a TimeoutError, so it counts as transient)."""


def _before(ends: float, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
    """fn's result if it comes before `ends` (monotonic time); else TimeoutError, the call left to finish in a daemon
    thread (an HTTP client offers timeouts per read only)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as exc:
            box["error"] = exc

    worker = threading.Thread(target=run, name="knnbe-qdrant-call", daemon=True)
    worker.start()
    worker.join(max(ends - time.monotonic(), 0.0))
    if worker.is_alive():
        raise DeadlineExceeded("no answer before the deadline")
    if "error" in box:
        raise box["error"]
    return box["result"]


def describe_fault(url: str, exc: BaseException, deadline: float | None) -> str:
    """One line: the server, what failed, what to do."""
    root = _root(exc)
    text = " ".join(str(root).split())[:200]
    where = f"the Qdrant server at {url}"
    if isinstance(root, (TimeoutError, httpx.TimeoutException)):
        limit = f"within {deadline:g} s" if deadline else "in time"
        return f"{where} did not answer {limit} (QDRANT_TIMEOUT / --timeout sets the limit); is it overloaded?"
    if isinstance(root, (httpx.ConnectError, ConnectionRefusedError)):
        return f"cannot connect to {where} ({text}): check the URL and that the server is running"
    if isinstance(root, UnexpectedResponse):
        status = root.status_code
        if status in (401, 403):
            return f"{where} refused the request (HTTP {status}): check the API key (--api-key / QDRANT_API_KEY)"
        if status is not None and status >= 500:
            return f"{where} failed (HTTP {status}: {text}); see the server's log, then try again"
        return f"{where} answered HTTP {status}: {text}"
    if isinstance(root, (httpx.RemoteProtocolError, httpx.ReadError, ConnectionResetError, httpx.WriteError)):
        return f"{where} dropped the connection ({text}); check the server, or a proxy in between"
    if isinstance(root, (ValueError, ResponseHandlingException, httpx.DecodingError)):
        return f"{where} answered something that is not Qdrant's API ({text}): check the URL and port"
    return f"{where}: {type(root).__name__}: {text}"
