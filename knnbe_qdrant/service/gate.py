"""What a request must do before the service works for it: arrive in time, carry a live key, and keep within its
size and its tenant's share of the bodies held in memory.

Without these, callers with no key at all could break every other caller: 500 connections from a client without a
key, each sending 999 of a 1,000 KB body and then nothing, held 485 MB of the service's memory for as long as they
stayed open (a real `serve`, 2026-12-07), and connections that sent nothing, or a header line now and then, were
never closed. uvicorn has no read timeout of its own (only one between requests on a kept-alive connection).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import anyio
import anyio.to_thread
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._errors import KnnbeError
from .state import Service, status_of

SCOPE_KEY = "knnbe.key"
"""Where the gate leaves the request's Key for the endpoints' role checks (routes.role)."""

TENANT_BODIES = 16
"""Bodies of the largest size (--max-body-bytes) that one tenant's requests in flight may hold at once; its next
request is answered 429 until some finish. A 16-client load test of map requests holds about 40 KB."""
TENANT_REQUESTS = 4096
"""One tenant's requests in flight at most, however small: each counts at least this part of the share."""


class RequestGate:
    """For every /v1 request: the key is checked from the headers before any of the body is read (401 without
    reading it), the body must arrive within the read timeout (408), stay within --max-body-bytes (413, whether it
    announces its length or streams it), and fit its tenant's share of the bodies and requests in flight (429)."""

    def __init__(self, app: ASGIApp, service: Service) -> None:
        self.app = app
        self.service = service
        self.limit = service.limits.max_body_bytes
        self.share = TENANT_BODIES * self.limit
        self.held: dict[str | None, int] = defaultdict(int)  # body bytes of each tenant's requests in flight
        # Key checks run on threads of their own: requests that hold the shared worker threads (edits waiting for a
        # lock or a fence) cannot hold up every other request's key check, and with it every tenant's mapping.
        self.key_checks = anyio.CapacityLimiter(8)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length", b"")
        has_body = length.strip(b"0") != b"" or b"transfer-encoding" in headers
        try:
            key = await anyio.to_thread.run_sync(self.service.authenticate,
                                                 headers.get(b"authorization", b"").decode("latin-1"),
                                                 limiter=self.key_checks)
        except KnnbeError as exc:  # 401, 503 before ready; a key ring that cannot be read (StoreError): 503
            await _answer(scope, receive, send, status_of(exc), str(exc), close=has_body)
            return
        scope[SCOPE_KEY] = key
        if length.isdigit() and int(length) > self.limit:
            await self._too_long(scope, receive, send)
            return
        tenant, taken = key.tenant, 0

        def take(size: int) -> bool:
            nonlocal taken
            if size > taken:
                if self.held[tenant] + size - taken > self.share:
                    return False
                self.held[tenant] += size - taken
                taken = size
            return True

        try:
            if not take(max(int(length) if length.isdigit() else 0, self.share // TENANT_REQUESTS)):
                await self._over_share(scope, receive, send)
                return
            body = await self._read_body(scope, receive, send, take)
            if body is None:
                return
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()  # after the body: the disconnect, when it comes

            await self.app(scope, replay, _in_chunks(send))
        finally:
            self.held[tenant] -= taken
            if not self.held[tenant]:
                del self.held[tenant]

    async def _read_body(self, scope: Scope, receive: Receive, send: Send, take: Any) -> bytes | None:
        """The whole body, or None once the request has been answered (too long, over the share, too slow) or the
        client went away."""
        chunks: list[bytes] = []
        seen, more = 0, True
        timeout = self.service.limits.read_timeout_s
        with anyio.move_on_after(timeout) as reading:
            while more:
                message = await receive()
                if message["type"] != "http.request":  # the client went away mid-body
                    return None
                chunks.append(message.get("body", b""))
                seen += len(chunks[-1])
                more = message.get("more_body", False)
                if seen > self.limit:
                    await self._too_long(scope, receive, send)
                    return None
                if not take(seen):
                    await self._over_share(scope, receive, send)
                    return None
        if reading.cancelled_caught:
            await _answer(scope, receive, send, 408, f"the request body did not arrive within {timeout:g} s "
                                                     "(the service's --read-timeout)", close=True)
            return None
        return b"".join(chunks)

    async def _too_long(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _answer(scope, receive, send, 413, f"request body over {self.limit} bytes (the service's "
                                                 "--max-body-bytes)", close=True)

    async def _over_share(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _answer(scope, receive, send, 429, f"this tenant's requests in flight take its share ({self.share} "
                                                 f"bytes of body, or {TENANT_REQUESTS} requests): retry when some are "
                                                 "answered", close=True)


ANSWER_CHUNK = 65_536
"""The largest piece of an answer handed to the connection at once."""


def _in_chunks(send: Send) -> Send:
    """`send`, with an answer's body handed over in pieces of ANSWER_CHUNK bytes. Over TLS, asyncio moved a whole
    body into the socket's buffer at once, under the TLS layer, where no flow control saw it: a 14 MB answer left
    unread stayed there whatever the write deadline (read_deadline_protocol). In pieces, the connection's flow
    control pauses the sender, and the deadline sees an answer that is not being read."""
    async def chunked(message: Message) -> None:
        body = message.get("body", b"")
        if message["type"] != "http.response.body" or len(body) <= ANSWER_CHUNK:
            await send(message)
            return
        more = message.get("more_body", False)
        for start in range(0, len(body), ANSWER_CHUNK):
            await send({"type": "http.response.body", "body": body[start : start + ANSWER_CHUNK],
                        "more_body": more or start + ANSWER_CHUNK < len(body)})

    return chunked


async def _answer(scope: Scope, receive: Receive, send: Send, status: int, message: str, *, close: bool) -> None:
    """An error answered before the body was read: the connection is closed after it (`Connection: close`), since
    the rest of the body may still be on its way and would be read as the next request."""
    response = JSONResponse({"error": message}, status_code=status, headers={"Connection": "close"} if close else None)
    await response(scope, receive, send)


def read_deadline_protocol(seconds: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol with deadlines. A connection whose request headers have not all arrived `seconds`
    after it opened or after its last answer is closed: a client that sends nothing, or a header line now and then,
    holds a connection for no longer than that. A connection whose client reads none of its answer for `seconds`
    (the write buffer over its high-water mark and not shrinking) is aborted, which drops the buffer: a 256-sentence
    map at top 100 is a 14 MB answer, and an unread one was held for as long as its connection stayed open (closing
    such a connection waits to flush it first)."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class ReadDeadline(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._unread: asyncio.TimerHandle | None = None
            self._headers_due: asyncio.TimerHandle | None = None
            self._await_headers()

        def pause_writing(self) -> None:
            super().pause_writing()
            if self._unread is None:
                self._check_reading(None)

        def resume_writing(self) -> None:
            super().resume_writing()
            if self._unread is not None:
                self._unread.cancel()
                self._unread = None

        def _check_reading(self, left: int | None) -> None:
            # Progress, not speed: a client that read any of the answer since the last look keeps its connection
            # (nginx's send_timeout likewise).
            now = self.transport.get_write_buffer_size()
            if left is not None and now >= left:
                self.transport.abort()
                return
            self._unread = self.loop.call_later(seconds, self._check_reading, now)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._await_headers()

        def _await_headers(self) -> None:
            # A new request's headers make a new cycle: the same cycle at the deadline means none came.
            if self._headers_due is not None:
                self._headers_due.cancel()
            self._headers_due = self.loop.call_later(seconds, self._overdue, self.cycle)

        def _overdue(self, cycle: Any) -> None:
            # A pipelined request parsed before the last answer was sent is the current cycle already: it is not
            # overdue while it is being answered.
            answering = cycle is not None and not cycle.response_complete
            if self.cycle is cycle and not answering and not self.transport.is_closing():
                self.transport.close()

    return ReadDeadline
