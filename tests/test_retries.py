"""Retries against real faults on loopback: a port that refuses, a server that resets or stalls the connection,
and an HTTP server that answers 503/429 with Retry-After or a plain 400. No mock of the client: qdrant-client talks
to real sockets."""

from __future__ import annotations

import json
import logging
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from knnbe_qdrant import ServerError
from knnbe_qdrant.store.client import QdrantClientStore
from knnbe_qdrant.store.retry import RetryPolicy

FAST = RetryPolicy(attempts=3, max_seconds=20, initial_wait=0.05, max_wait=0.1)


def connect(port: int, timeout: int = 2, policy: RetryPolicy = FAST) -> QdrantClientStore:
    return QdrantClientStore.connect(f"http://127.0.0.1:{port}", timeout=timeout, retry=policy,
                                     check_compatibility=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RawServer:
    """Accepts connections on loopback and resets them, or holds them open without answering."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.accepted = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            if self.behaviour == "reset":
                conn.recv(1024)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
                conn.close()
            else:
                self.held.append(conn)  # stall: read nothing, answer nothing

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        for c in self.held:
            c.close()
        self.sock.close()


@pytest.fixture
def raw_server(request):
    server = RawServer(request.param)
    yield server
    server.close()


class ScriptedHTTP:
    """A real HTTP server on loopback answering each request with the next scripted (status, headers) reply; once
    the script is used up it answers like Qdrant does to `collection exists`."""

    def __init__(self, script: list[tuple[int, dict]]) -> None:
        self.script = list(script)
        self.requests: list[tuple[float, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append((time.monotonic(), self.path))
                status, headers = outer.script.pop(0) if outer.script else (200, {})
                body = json.dumps(
                    {"result": {"exists": False}, "status": "ok", "time": 0.0} if status == 200
                    else {"status": {"error": f"scripted {status}"}, "time": 0.0}
                ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_refused_connection_is_retried_then_raised(caplog):
    store = connect(free_port())
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="knnbe_qdrant.retry"), pytest.raises(Exception) as info:
        store.exists()
    assert "refused" in repr(info.value).lower() or "connect" in repr(info.value).lower()
    assert len([r for r in caplog.records if "transient Qdrant fault" in r.message]) == FAST.attempts - 1
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("raw_server", ["reset"], indirect=True)
def test_reset_connection_is_retried(raw_server):
    store = connect(raw_server.port)
    with pytest.raises(Exception):
        store.exists()
    assert raw_server.accepted == FAST.attempts


@pytest.mark.parametrize("raw_server", ["stall"], indirect=True)
def test_stalled_connection_ends_within_the_timeout_as_one_line(raw_server):
    # The timeout is a deadline for the whole call, retries included, not per read.
    store = connect(raw_server.port, timeout=1, policy=RetryPolicy(attempts=5, max_seconds=20, initial_wait=0.05,
                                                                     max_wait=0.1))
    started = time.monotonic()
    with pytest.raises(ServerError) as info:
        store.exists()
    elapsed = time.monotonic() - started
    assert raw_server.accepted >= 1
    assert 0.9 <= elapsed < 1.5
    assert str(info.value) == (f"the Qdrant server at http://127.0.0.1:{raw_server.port} did not answer within 1 s "
                               "(QDRANT_TIMEOUT / --timeout sets the limit); is it overloaded?")


@pytest.mark.parametrize("status", [503, 429])
def test_busy_server_is_retried_after_the_time_it_asks_for(status):
    server = ScriptedHTTP([(status, {"Retry-After": "1"})])
    try:
        assert connect(server.port).exists() is False  # the second answer: no such collection
        (t1, path1), (t2, path2) = server.requests
        assert path1 == path2 == "/collections/knnbe_meta/exists"
        assert t2 - t1 >= 0.95  # Retry-After honoured
    finally:
        server.close()


@pytest.mark.parametrize("status", [400, 404, 409])
def test_client_errors_are_not_retried(status):
    server = ScriptedHTTP([(status, {})] * 5)
    try:
        with pytest.raises(Exception, match=str(status)):
            connect(server.port).exists()
        assert len(server.requests) == 1
    finally:
        server.close()


def test_attempts_are_bounded_by_total_time():
    server = ScriptedHTTP([(503, {"Retry-After": "1"})] * 10)
    try:
        policy = RetryPolicy(attempts=10, max_seconds=1.5, initial_wait=0.05, max_wait=0.1)
        started = time.monotonic()
        with pytest.raises(Exception, match="503"):
            connect(server.port, policy=policy).exists()
        assert time.monotonic() - started < 4
        assert 2 <= len(server.requests) <= 3
    finally:
        server.close()
