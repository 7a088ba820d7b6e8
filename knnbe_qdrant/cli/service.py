"""Commands of the HTTP service (the server extra): serve, keys (create, list, revoke), loadtest."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from .._errors import InvalidInputError, KnnbeError
from .._quota import DEFAULT_QUOTA, Quota
from ._common import connection


def register(sub: Any, parent: argparse.ArgumentParser) -> None:
    sv = sub.add_parser("serve", parents=[parent], help="serve the store over HTTP: JSON API with scoped keys, curator "
                        "page, /docs, /healthz, /readyz, /metrics (needs the server extra)")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: loopback only)")
    sv.add_argument("--port", type=_ranged(int, 1, 65535), default=8000, help="port (default 8000)")
    sv.add_argument("--max-body-bytes", type=_ranged(int, 1), default=1_000_000,
                    help="largest request body (default 1000000)")
    sv.add_argument("--max-sentences", type=_ranged(int, 1), default=256, help="sentences per map request "
                    "(default 256)")
    sv.add_argument("--max-chars", type=_ranged(int, 1), default=5_000, help="characters per sentence (default 5000)")
    sv.add_argument("--batch-wait-ms", type=_ranged(float, 0, 1000), default=3.0, help="how long a map request "
                    "waits for others to batch with (default 3; 0 to 1000)")
    sv.add_argument("--map-workers", type=_ranged(int, 1, 64), default=None, help="threads that encode and map "
                    "requests, each encoder call on its share of the cores (default: 2 on a machine of two cores or "
                    "more, else 1)")
    sv.add_argument("--read-timeout", type=_ranged(float, 0.1, 3600), default=30.0, help="seconds a request's "
                    "headers and then its body may take to arrive, and a client may leave its answer unread; then "
                    "the connection is closed (408 for a body) (default 30)")
    sv.add_argument("--tenant-max-skills", type=_ranged(int, 0), default=DEFAULT_QUOTA.skills,
                    help=f"skills of its own a tenant may add (default {DEFAULT_QUOTA.skills}; 0: no limit)")
    sv.add_argument("--tenant-max-sentences", type=_ranged(int, 0), default=DEFAULT_QUOTA.sentences,
                    help=f"memory sentences of its own a tenant may add (default {DEFAULT_QUOTA.sentences}; 0: no "
                    "limit)")
    sv.add_argument("--tenant-max-audit-entries", type=_ranged(int, 0), default=DEFAULT_QUOTA.audit_entries,
                    help=f"entries a tenant's audit log may hold, one an edit; at the quota its edits are refused "
                    f"(default {DEFAULT_QUOTA.audit_entries}; 0: no limit)")
    sv.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                    help="allow browser calls from this origin (repeatable; default: none, CORS off)")
    sv.add_argument("--ssl-certfile", help="serve HTTPS with this certificate (or terminate TLS at a reverse proxy)")
    sv.add_argument("--ssl-keyfile", help="the certificate's private key")
    sv.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    sv.set_defaults(func=serve)

    ky = sub.add_parser("keys", help="API keys of the service: create, list, revoke")
    actions = ky.add_subparsers(dest="action", required=True)
    p = actions.add_parser("create", parents=[parent], help="create a key; its secret is printed once")
    p.add_argument("--role", required=True, choices=["reader", "curator", "admin"],
                   help="reader: map and read; curator: also edit its tenant's layer; admin: the global layer and "
                   "tenants")
    p.add_argument("--tenant", help="the tenant the key acts for (required for reader and curator; none for admin)")
    p.add_argument("--name", help="a name for the key (default: TENANT-ROLE-xxxxxx); recorded as created_by")
    p.add_argument("--json", action="store_true", help='print {"name", "tenant", "role", "secret"}')
    p.set_defaults(func=keys_create)
    p = actions.add_parser("list", parents=[parent], help="the keys, without their secrets")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=keys_list)
    p = actions.add_parser("revoke", parents=[parent], help="revoke a key: refused from its next request on")
    p.add_argument("name")
    p.set_defaults(func=keys_revoke)

    lt = sub.add_parser("loadtest", parents=[parent], help="serve the store on loopback and load it: concurrent "
                        "clients mapping 1-5 sentences and some curator writes; prints a table")
    lt.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    lt.add_argument("--seconds", type=float, default=60.0, help="how long to load (default 60)")
    lt.add_argument("--write-share", type=float, default=0.05, help="share of requests that are writes (default .05)")
    lt.add_argument("--map-workers", type=_ranged(int, 1, 64), default=None,
                    help="the service's --map-workers (default: its own default)")
    lt.add_argument("--json", action="store_true")
    lt.set_defaults(func=loadtest)


def _ranged(kind: type, low: float, high: float | None = None) -> Any:
    """An argparse type: a number of `kind` from `low` to `high`, else argparse's one-line error naming the flag."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number") from None
        if not (value >= low and (high is None or value <= high)):  # NaN fails this too
            raise argparse.ArgumentTypeError(f"{text} is not between {low} and {high}" if high is not None
                                             else f"{text} is below {low}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _server_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise KnnbeError(f"the service needs the server extra: pip install 'knnbe-qdrant[server]' ({exc})") from None


def serve(args: argparse.Namespace) -> int:
    _server_extra()
    import uvicorn

    from ..service.app import create_app
    from ..service.gate import read_deadline_protocol
    from ..service.state import Limits

    for flag, path in (("--ssl-certfile", args.ssl_certfile), ("--ssl-keyfile", args.ssl_keyfile)):
        if path is not None and not os.path.isfile(path):
            raise InvalidInputError(f"{flag} {path}: no such file")
    if (args.ssl_certfile is None) != (args.ssl_keyfile is None) and args.ssl_keyfile is not None:
        raise InvalidInputError("--ssl-keyfile needs --ssl-certfile")
    limits = Limits(max_body_bytes=args.max_body_bytes, max_sentences=args.max_sentences, max_chars=args.max_chars,
                    batch_wait_ms=args.batch_wait_ms, map_workers=args.map_workers, read_timeout_s=args.read_timeout,
                    quota=Quota(skills=args.tenant_max_skills or None, sentences=args.tenant_max_sentences or None,
                                audit_entries=args.tenant_max_audit_entries or None))
    app = create_app(connection(args), limits=limits, cors_origins=tuple(args.cors_origin))
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            http=read_deadline_protocol(limits.read_timeout_s),
                            ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile, timeout_graceful_shutdown=30,
                            access_log=False)  # no access log: it would hold request details

    class Server(uvicorn.Server):
        """SIGTERM or SIGINT: /readyz turns 503 at once, new connections are refused, the requests in flight
        finish (30 s at most), then the batcher stops and the store is flushed and closed (app shutdown)."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            app.state.service.draining = True
            super().handle_exit(sig, frame)

    Server(config).run()
    return 0


def _keyring(args: argparse.Namespace) -> Any:
    from ..service.keys import KeyRing

    return KeyRing(connection(args).documents())


def keys_create(args: argparse.Namespace) -> int:
    ring = _keyring(args)
    try:
        key, secret = ring.create(role=args.role, tenant=args.tenant, name=args.name)
    finally:
        ring.documents.close()
    if args.json:
        print(json.dumps({"name": key.name, "tenant": key.tenant, "role": key.role, "secret": secret}))
    else:
        print(f"created key {key.name} ({key.role}, {'tenant ' + key.tenant if key.tenant else 'global'})")
        print(f"secret (shown once, only its hash is kept): {secret}")
    return 0


def keys_list(args: argparse.Namespace) -> int:
    ring = _keyring(args)
    try:
        keys = ring.list()
    finally:
        ring.documents.close()
    if args.json:
        print(json.dumps([k.public() for k in keys]))
    else:
        for k in keys:
            state = f"revoked {k.revoked_at}" if k.revoked_at else "live"
            print(f"{k.name}\t{k.role}\t{k.tenant or '-'}\t{k.created_at}\t{state}")
    return 0


def keys_revoke(args: argparse.Namespace) -> int:
    ring = _keyring(args)
    try:
        key = ring.revoke(args.name)
    finally:
        ring.documents.close()
    print(f"revoked {key.name} at {key.revoked_at}")
    return 0


def loadtest(args: argparse.Namespace) -> int:
    _server_extra()
    from ..service.loadtest import format_table, run_loadtest

    report = run_loadtest(connection(args), clients=args.clients, seconds=args.seconds, write_share=args.write_share,
                          map_workers=args.map_workers)
    print(json.dumps(report) if args.json else format_table(report))
    return 0 if report["errors"] == 0 and report["lost_writes"] == 0 else 1
