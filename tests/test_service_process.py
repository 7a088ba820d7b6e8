"""The service as users run it: `knnbe-qdrant serve` as a real process on loopback, keys made with the command line
while it runs, the load test's short mode, and the curator page walked in a real browser (headless Chromium driven
by Playwright)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from knnbe_qdrant import Connection, EdgeStore
from knnbe_qdrant.service.loadtest import _free_port, run_loadtest
from tests.helpers import add_unindexed, run, start_service

CHROMIUM = Path("/usr/bin/chromium")
PROBE = "You will administer our Qdrant vector database and tune its HNSW indexes."
MULTI = "You will design and maintain REST APIs in Python and write efficient SQL queries against PostgreSQL."
TEACH = ["Operate and tune Qdrant vector database clusters in production.",
         "Design collections, payload indexes and HNSW settings for a vector search engine.",
         "Keep our vector database fast: sharding, replication and snapshot backups."]


def create_key(store: Path, *args: str) -> dict:
    r = run("keys", "create", *args, "--json", store=store)
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def served(cli_store, tmp_path_factory):
    path = tmp_path_factory.mktemp("served") / "store"
    shutil.copytree(cli_store, path)
    started = time.perf_counter()
    proc, base = start_service(path, _free_port(), path.parent / "serve.log")
    ready_after = time.perf_counter() - started
    yield base, path, ready_after
    proc.terminate()
    proc.wait(timeout=30)


def test_keys_made_on_the_command_line_work_at_once_and_revoke_at_once(served):
    base, path, _ = served
    key = create_key(path, "--role", "reader", "--tenant", "acme", "--name", "cli-made")  # while the service runs
    assert set(key) == {"name", "tenant", "role", "secret"} and key["secret"].startswith("knq_")
    stored = (path / "keys.json").read_text()
    assert key["secret"] not in stored and "cli-made" in stored  # only the hash is kept
    h = {"Authorization": f"Bearer {key['secret']}"}
    assert httpx.get(f"{base}/v1/whoami", headers=h).json() == {"name": "cli-made", "role": "reader", "tenant": "acme"}
    listed = json.loads(run("keys", "list", "--json", store=path).stdout)
    assert any(k["name"] == "cli-made" and k["revoked_at"] is None for k in listed)
    assert "secret" not in json.dumps(listed) and "sha256" not in json.dumps(listed)
    assert run("keys", "revoke", "cli-made", store=path).returncode == 0
    assert httpx.get(f"{base}/v1/whoami", headers=h).status_code == 401
    bad = run("keys", "create", "--role", "reader", store=path)  # a reader needs a tenant
    assert bad.returncode == 2 and b"needs a --tenant" in bad.stderr


def test_the_server_binds_loopback_and_answers_like_the_library(served):
    base, path, ready_after = served
    assert base.startswith("http://127.0.0.1:")
    assert ready_after < 30  # the target (< 5 s on the full default store) is measured by loadtest, not asserted
    key = create_key(path, "--role", "reader", "--tenant", "acme")
    r = httpx.post(f"{base}/v1/map", json={"sentences": ["Programming in Python"], "top": 3},
                   headers={"Authorization": f"Bearer {key['secret']}"})
    assert r.status_code == 200 and r.json()["results"][0]["skills"][0]["label"] == "Python (computer programming)"
    assert "access-control-allow-origin" not in {h.lower() for h in r.headers}  # CORS is off by default


def test_load_test_short_mode_has_no_errors_and_loses_no_write(cli_store, tmp_path):
    path = tmp_path / "store"
    shutil.copytree(cli_store, path)
    report = run_loadtest(Connection.resolve(path), clients=4, seconds=3, baseline=False)
    assert report["map_requests"] > 10 and report["writes"] >= 0
    assert report["errors"] == 0, report["first_errors"]
    assert report["lost_writes"] == 0
    assert report["mean_sentences_per_batch"] >= 1


def _browser_missing() -> bool:
    return not CHROMIUM.exists()


@pytest.mark.skipif(_browser_missing() and not os.environ.get("CI"),
                    reason="needs Debian's chromium (scripts/install-browser.sh); CI installs it")
def test_curator_flow_in_a_real_browser(served):
    from playwright.sync_api import expect, sync_playwright

    base, path, _ = served
    curator = create_key(path, "--role", "curator", "--tenant", "acme", "--name", "alice@acme")
    other = create_key(path, "--role", "reader", "--tenant", "beta", "--name", "bob@beta")
    shots = Path(os.environ.get("KNNBE_SCREENSHOTS") or path.parent / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    flags = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=flags)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(base + "/")
        page.fill("#key", curator["secret"])
        page.click("#signin")
        expect(page.locator("#whoami")).to_contain_text("alice@acme · curator · tenant acme")

        page.fill("#sentences", PROBE)
        page.click("#map")
        expect(page.locator(".result")).to_have_count(1)
        assert page.locator('.skill-row[data-skill="acme:vdb"]').count() == 0

        # Token-level matching, the shipped model's default: each match says which words it matched on. Decomposition
        # is opt-in (unticked, as the store maps); ticked, a multi-skill sentence's matches say which piece they
        # came from.
        expect(page.locator("#decompose")).not_to_be_checked()
        page.fill("#sentences", MULTI)
        page.fill("#top", "10")
        page.click("#map")
        expect(page.locator(".result .tokens").first).to_contain_text("matched on “")
        expect(page.locator(".result .piece")).to_have_count(0)
        page.check("#decompose")
        page.click("#map")
        expect(page.locator(".result .piece").first).to_contain_text("from the piece “")
        page.screenshot(path=str(shots / "curator-decomposed.png"), full_page=True)
        page.uncheck("#decompose")
        page.fill("#top", "5")
        page.click("#map")
        expect(page.locator(".result .piece")).to_have_count(0)

        page.fill("#skill-id", "acme:vdb")
        page.fill("#skill-label", "administer vector databases")
        page.fill("#skill-description", "Run and tune vector search engines such as Qdrant.")
        page.click("#add-skill")
        # The first edit loads the curator's full-precision encoder: seconds on two cores that another test worker
        # keeps busy (it missed Playwright's 5 s default once in a full run while int8 quantization ran beside it).
        expect(page.locator("#message")).to_contain_text("Added skill administer vector databases", timeout=30_000)

        # Teach the new skill from results: map the sentences, then add each one to the skill found by label.
        page.fill("#sentences", "\n".join(TEACH))
        page.click("#map")
        expect(page.locator(".result")).to_have_count(len(TEACH))
        for i in range(len(TEACH)):
            box = page.locator(".result").nth(i)
            box.locator(".teach-search").fill("administer vector databases")
            box.locator(".teach-find").click()
            box.locator('.teach-pick[data-skill="acme:vdb"]').click()
            # The page maps again after each edit, then says so: wait for this sentence's message.
            expect(page.locator("#message")).to_contain_text(f"“{TEACH[i]}” → administer vector databases: added")

        page.fill("#sentences", PROBE)
        page.click("#map")
        row = page.locator('.skill-row[data-skill="acme:vdb"]')
        expect(row).to_have_count(1)
        ranks = page.locator(".skill-row").evaluate_all("rows => rows.map(r => r.dataset.skill)")
        assert ranks.index("acme:vdb") < 3, ranks
        evidence = row.locator(".evidence li")
        assert evidence.count() >= 2
        hidden_text = evidence.first.inner_text().split("“", 1)[1].split("”", 1)[0]
        page.screenshot(path=str(shots / "curator-ranked.png"), full_page=True)
        row.locator("button.hide").first.click()
        expect(page.locator("#message")).to_contain_text("removed")
        expect(page.locator('.skill-row[data-skill="acme:vdb"] .evidence')).not_to_contain_text(hidden_text)

        page.fill("#memory-skill", "acme:vdb")
        page.click("#browse")
        expect(page.locator("#memory-table tbody tr")).to_have_count(len(TEACH) - 1)
        expect(page.locator("#memory-table")).to_contain_text("alice@acme")
        page.click("#refresh-audit")
        expect(page.locator(".audit-row").first).to_contain_text("memory removed")
        page.screenshot(path=str(shots / "curator-memory-audit.png"), full_page=True)

        # Another tenant's key sees none of it.
        page2 = browser.new_context().new_page()
        page2.goto(base + "/")
        page2.fill("#key", other["secret"])
        page2.click("#signin")
        expect(page2.locator("#whoami")).to_contain_text("bob@beta · reader · tenant beta")
        assert page2.locator(".curator-only").first.is_hidden()
        page2.fill("#sentences", PROBE)
        page2.click("#map")
        expect(page2.locator(".result")).to_have_count(1)
        text = page2.locator("#results").inner_text()
        assert "administer vector databases" not in text and not any(t in text for t in TEACH)
        page2.fill("#memory-skill", "acme:vdb")
        page2.click("#browse")
        expect(page2.locator("#message")).to_contain_text("no skill 'acme:vdb'")
        expect(page2.locator(".audit-row")).to_have_count(0)
        page2.screenshot(path=str(shots / "other-tenant.png"), full_page=True)
        browser.close()


@pytest.mark.skipif(_browser_missing() and not os.environ.get("CI"),
                    reason="needs Debian's chromium (scripts/install-browser.sh); CI installs it")
def test_the_curator_page_pages_through_a_skills_memory(served):
    """The page lists a skill's memory 200 at a time (the API's pages): 'show more' adds the next page below, until
    every sentence is shown once."""
    from concurrent.futures import ThreadPoolExecutor

    from playwright.sync_api import expect, sync_playwright

    base, path, _ = served
    curator = create_key(path, "--role", "curator", "--tenant", "paging", "--name", "carol@paging")
    h = {"Authorization": f"Bearer {curator['secret']}"}
    assert httpx.post(f"{base}/v1/skills", json={"id": "paging:many", "label": "a skill with many sentences"},
                      headers=h).status_code == 201
    texts = [f"Sentence number {i} that teaches the skill with many sentences." for i in range(205)]
    with httpx.Client(base_url=base, headers=h, timeout=60) as client, ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda t: client.post("/v1/memory", json={"skill": "paging:many", "text": t}).status_code,
                              texts))
    assert codes == [201] * len(texts)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.goto(base + "/")
        page.fill("#key", curator["secret"])
        page.click("#signin")
        expect(page.locator("#whoami")).to_contain_text("carol@paging")
        page.fill("#memory-skill", "paging:many")
        page.click("#browse")
        expect(page.locator("#memory-table tbody tr")).to_have_count(200)
        expect(page.locator("#memory-count")).to_contain_text("200 sentence(s), more to come")
        page.click("#memory-more")
        expect(page.locator("#memory-table tbody tr")).to_have_count(205)
        expect(page.locator("#memory-more")).to_have_count(0)
        shown = page.locator("#memory-table tbody tr td:first-child").all_inner_texts()
        assert sorted(shown) == sorted(texts)
        page.click("#browse")  # browsing again starts from the first page
        expect(page.locator("#memory-table tbody tr")).to_have_count(200)
        browser.close()


@pytest.mark.skipif(_browser_missing() and not os.environ.get("CI"),
                    reason="needs Debian's chromium (scripts/install-browser.sh); CI installs it")
def test_docs_render_from_this_origin_under_a_strict_policy(served):
    """Swagger UI's files come from the service itself (no CDN) and run under a CSP that names the page's one
    inline script by its hash: the page renders every operation and the browser reports no blocked script."""
    from playwright.sync_api import expect, sync_playwright

    base, _, _ = served
    r = httpx.get(f"{base}/docs")
    assert "script-src 'self' 'sha256-" in r.headers["content-security-policy"]
    assert "https://" not in r.text
    flags = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=flags)
        page = browser.new_page()
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
        page.on("requestfailed", lambda req: problems.append(req.url))
        page.goto(base + "/docs")
        expect(page.locator(".opblock-summary-path").first).to_be_visible(timeout=20_000)
        assert page.locator('.opblock-summary-path[data-path="/v1/map"]').count() >= 1
        browser.close()
    assert not problems, problems


def test_sigterm_finishes_what_is_in_flight_and_keeps_acknowledged_writes(cli_store, tmp_path):
    path = tmp_path / "store"
    shutil.copytree(cli_store, path)
    curator = create_key(path, "--role", "curator", "--tenant", "acme")
    log = tmp_path / "serve.log"
    proc, base = start_service(path, _free_port(), log)
    headers = {"Authorization": f"Bearer {curator['secret']}"}
    r = httpx.post(f"{base}/v1/memory", json={"skill": "SQL", "text": "Acknowledged just before the SIGTERM"},
                   headers=headers, timeout=30)
    assert r.status_code == 201, r.text
    with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as pool:
            body = {"sentences": [f"Writing SQL queries for report number {i}" for i in range(200)]}
            pending = pool.submit(client.post, "/v1/map", json=body)
            time.sleep(0.3)  # the request is in flight
            proc.send_signal(signal.SIGTERM)
            answer = pending.result()
    assert answer.status_code == 200 and len(answer.json()["results"]) == 200
    # uvicorn re-raises the signal once shut down, so the status says SIGTERM; the log says the shutdown was clean
    assert proc.wait(timeout=40) in (0, -signal.SIGTERM), log.read_text()
    assert "Application shutdown complete" in log.read_text()
    r = run("memory", "list", "--skill", "SQL", "--tenant", "acme", "--json", store=path)
    assert "Acknowledged just before the SIGTERM" in r.stdout.decode()


def test_requests_of_clients_that_went_away_are_not_computed(served):
    base, path, _ = served
    reader = create_key(path, "--role", "reader", "--tenant", "acme")
    port = int(base.rsplit(":", 1)[1])

    def encoded() -> float:
        text = httpx.get(f"{base}/metrics").text
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith("knnbe_map_batch_sentences_sum"))

    before = encoded()
    body = json.dumps({"sentences": [f"Experience with Python and SQL, item {i}" for i in range(200)]}).encode()
    request = (b"POST /v1/map HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer "
               + reader["secret"].encode() + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
    for c in clients:
        c.sendall(request)
    time.sleep(0.2)
    for c in clients:  # every client gives up before its answer
        c.close()
    settled, last = time.perf_counter(), encoded()
    while time.perf_counter() - settled < 3:  # until no batch has run for 3 s
        time.sleep(0.5)
        if (now := encoded()) != last:
            settled, last = time.perf_counter(), now
    assert last - before <= 2 * 200, f"{last - before:.0f} of {8 * 200} abandoned sentences were encoded"


def test_every_acknowledged_edit_survives_a_sigkill_of_the_service(cli_store, tmp_path):
    # SIGKILL: no shutdown, no flush, no close. Every edit the service answered 2xx before the kill, of every kind and
    # by two tenants and the global layer, is in the store the next process opens; writes still in flight at the kill
    # may land or not, but leave the store whole (it opens, verifies and maps).
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "store"
    shutil.copytree(cli_store, path)
    keys = {who: create_key(path, *(("--role", "curator", "--tenant", who) if who != "global" else ("--role", "admin")))
            for who in ("acme", "beta", "global")}
    proc, base = start_service(path, _free_port(), tmp_path / "serve.log")
    clients = {who: httpx.Client(base_url=base, headers={"Authorization": f"Bearer {k['secret']}"}, timeout=60)
               for who, k in keys.items()}

    def ok(who: str, route: str, body: dict) -> None:
        r = clients[who].post(route, json=body)
        assert r.status_code in (200, 201), (who, route, r.text)

    for who in ("acme", "beta", "global"):
        ok(who, "/v1/skills", {"id": f"{who}:vdb", "label": f"vector database administration ({who})"})
        ok(who, "/v1/memory", {"skill": f"{who}:vdb", "text": f"{who} runs Qdrant clusters in production"})
        ok(who, "/v1/memory", {"skill": "SQL", "text": f"{who} writes SQL reports"})
        ok(who, "/v1/memory/relabel", {"skill": "SQL", "text": f"{who} writes SQL reports", "to": f"{who}:vdb"})
        ok(who, "/v1/skills/update", {"skill": f"{who}:vdb", "label": f"vector search operations ({who})"})
    ok("acme", "/v1/skills/retire", {"skill": "PostgreSQL"})  # a global skill, hidden for acme alone
    ok("beta", "/v1/memory", {"skill": "SQL", "text": "beta removes this one"})
    ok("beta", "/v1/memory/remove", {"skill": "SQL", "text": "beta removes this one"})
    with ThreadPoolExecutor(8) as pool:  # writes in flight at the kill: it lands once some were acknowledged
        late = [pool.submit(clients["acme"].post, "/v1/memory", json={"skill": "SQL", "text": f"in flight {i}"})
                for i in range(2000)]
        waited = time.perf_counter()
        while sum(f.done() for f in late) < 30 and time.perf_counter() - waited < 30:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        acknowledged = []
        for i, f in enumerate(late):
            try:
                if f.result().status_code == 201:
                    acknowledged.append(f"in flight {i}")
            except httpx.TransportError:
                pass
    for c in clients.values():
        c.close()

    def listed(*args: str) -> str:
        r = run(*args, "--json", store=path)
        assert r.returncode == 0, r.stderr.decode()
        return r.stdout.decode()

    for who in ("acme", "beta", "global"):
        tenant = () if who == "global" else ("--tenant", who)
        skills = listed("skill", "list", *tenant)
        assert f"vector search operations ({who})" in skills and f"vector database administration ({who})" not in skills
        memory = listed("memory", "list", "--skill", f"{who}:vdb", *tenant)
        assert f"{who} runs Qdrant clusters in production" in memory and f"{who} writes SQL reports" in memory
        assert f"{who} writes SQL reports" not in listed("memory", "list", "--skill", "SQL", *tenant)
    assert "PostgreSQL" not in listed("skill", "list", "--tenant", "acme")
    assert "PostgreSQL" in listed("skill", "list", "--tenant", "beta")
    assert "beta removes this one" not in listed("memory", "list", "--skill", "SQL", "--tenant", "beta")
    acme_sql = listed("memory", "list", "--skill", "SQL", "--tenant", "acme")
    assert 0 < len(acknowledged) < len(late), "the kill did not land while writes were in flight"
    assert all(f'"{text}"' in acme_sql for text in acknowledged), acknowledged
    r = run("map", "--tenant", "acme", "--json", PROBE, store=path)
    assert r.returncode == 0, r.stderr.decode()


def _status(sock: socket.socket, wait: float) -> str:
    """The status code of the answer on a raw connection, 'closed' where it closed without one, 'none' where no
    answer came within `wait` seconds."""
    sock.settimeout(wait)
    try:
        data = sock.recv(4096)
    except TimeoutError:
        return "none"
    return data.split(b" ")[1].decode() if data else "closed"


def _trickle_until_closed(sock: socket.socket, seconds: float) -> float:
    """Seconds until the server closed a connection that sends a header line every 0.2 s (`seconds` if never)."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            sock.sendall(b"X-Slow: 1\r\n")
        except OSError:
            return time.monotonic() - started
        time.sleep(0.2)
    return seconds


@contextlib.contextmanager
def _serving(cli_store: Path, tmp_path: Path, *args: str):
    """A real `serve` with these arguments on a copy of the store: (port, base URL, a reader key of tenant acme)."""
    path = tmp_path / "store"
    shutil.copytree(cli_store, path)
    secret = create_key(path, "--role", "reader", "--tenant", "acme")["secret"]
    port = _free_port()
    proc, base = start_service(path, port, tmp_path / "serve.log", *args)
    try:
        yield port, base, secret
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _check_an_unread_answer_is_cut(port: int, secret: str, opened: list, wrap=lambda sock: sock) -> None:
    """An answer of several MB (256 sentences, top 100) that its client leaves unread: the connection is dropped at
    the timeout (2 s), with it the part of the answer the kernel had not taken. Read at once, it comes whole."""
    big = json.dumps({"sentences": [f"Writing SQL queries and Python scripts, case {i}" for i in range(256)],
                      "top": 100}).encode()
    asked, started = [], time.monotonic()
    for _ in range(2):
        sock = socket.socket()
        opened.append(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock = wrap(sock)
        opened.append(sock)
        sock.sendall(f"POST /v1/map HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secret}\r\nContent-Type: "
                     f"application/json\r\nContent-Length: {len(big)}\r\n\r\n".encode() + big)
        asked.append(sock)
    got, size = _read_answer(asked[0])
    assert got == size > 4_000_000, (got, size)
    # Until the second answer was made (as long again as the first, at most) and cut 2 s later: on a machine busy
    # with other work a fixed 6 s was too short, and the answer, made after it, was read whole.
    time.sleep(max(6.0, 2 * (time.monotonic() - started) + 4))
    got, size = _read_answer(asked[1])
    assert got < size, (got, size)


def _read_answer(sock: socket.socket) -> tuple[int, int]:
    """(body bytes read until the answer was whole or the connection ended, the body's Content-Length)."""
    sock.settimeout(60)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    size = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    got = len(body)
    while got < size:
        try:
            chunk = sock.recv(1 << 20)
        except OSError:  # reset; over TLS, an end without close_notify
            break
        if not chunk:
            break
        got += len(chunk)
    return got, size


def test_keyless_slow_and_greedy_clients_hold_no_connection_or_memory(cli_store, tmp_path):
    # Before the request gate (a real serve, 2026-12-07): 500 connections without a key, each sending 999 KB of a
    # 1 MB body and then nothing, held 485 MB of the service for as long as they stayed open, and connections that
    # sent nothing, or a header line now and then, were never closed, nor those whose clients left a 9 MB answer
    # unread. Now a keyless body is refused before it is read, slow headers and bodies and unread answers are cut at
    # --read-timeout, and one tenant's bodies in flight are capped at 16 of the largest.
    path = tmp_path / "store"
    shutil.copytree(cli_store, path)
    acme = create_key(path, "--role", "reader", "--tenant", "acme")["secret"]
    beta = create_key(path, "--role", "reader", "--tenant", "beta")["secret"]
    port = _free_port()
    proc, base = start_service(path, port, tmp_path / "serve.log", "--read-timeout", "2", "--max-body-bytes", "30000")
    opened: list[socket.socket] = []

    def connect(head: str, body: bytes = b"") -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port))
        opened.append(sock)
        sock.sendall(head.encode() + body)
        return sock

    def stalled_map(secret: str | None) -> socket.socket:
        auth = f"Authorization: Bearer {secret}\r\n" if secret else ""
        return connect(f"POST /v1/map HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
                       "Content-Length: 30000\r\n\r\n", b'{"sentences": [')

    try:
        idle = connect("")
        trickled = connect("GET /healthz HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        assert _status(stalled_map(None), 1.5) == "401" and time.monotonic() - started < 1.5  # not waiting for it
        held = [stalled_map(acme) for _ in range(17)]
        time.sleep(1)
        refused = [s for s in held if _status(s, 0.01) == "429"]  # the one over acme's share of bodies in flight
        assert len(refused) == 1
        held.remove(refused[0])
        r = httpx.post(f"{base}/v1/map", json={"sentences": ["Programming in Python"]},
                       headers={"Authorization": f"Bearer {beta}"}, timeout=5)
        assert r.status_code == 200  # another tenant, while acme's share is taken
        assert [_status(s, 5) for s in held] == ["408"] * 16
        assert _status(idle, 5) == "closed"
        assert _trickle_until_closed(trickled, seconds=10) < 4  # a header line every 0.2 s: closed all the same
        r = httpx.post(f"{base}/v1/map", json={"sentences": ["Programming in Python"]},
                       headers={"Authorization": f"Bearer {acme}"}, timeout=5)
        assert r.status_code == 200  # acme's share is back
        _check_an_unread_answer_is_cut(port, beta, opened)
        assert httpx.get(f"{base}/healthz").status_code == 200
    finally:
        for sock in opened:
            sock.close()
        proc.terminate()
        proc.wait(timeout=30)


def test_an_answer_left_unread_is_cut_over_tls_too(cli_store, tmp_path):
    # Over TLS, asyncio moved a whole answer under the TLS layer into the socket's buffer at once, where no flow
    # control saw it: a 14 MB answer left unread 15 s came whole (a real serve with a certificate, 2026-12-07). The
    # gate now hands answers over in 64 KB pieces, which the flow control, and so the write deadline, sees.
    import ssl

    import trustme

    ca = trustme.CA()
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(tmp_path / "server.pem")
    pem = str(tmp_path / "server.pem")
    client = ssl.create_default_context()
    ca.configure_trust(client)
    opened: list = []
    with _serving(cli_store, tmp_path, "--read-timeout", "2", "--ssl-certfile", pem, "--ssl-keyfile", pem) as (
            port, base, secret):
        try:
            assert base.startswith("https://")
            _check_an_unread_answer_is_cut(port, secret, opened,
                                           lambda sock: client.wrap_socket(sock, server_hostname="127.0.0.1"))
        finally:
            for sock in opened:
                sock.close()


def test_a_pipelined_request_is_answered_whole_however_long_it_takes(cli_store, tmp_path):
    # The read deadline armed after an answer took the next request, already read from a pipelined connection, for
    # one whose headers never came, and closed the connection while it was being answered (a 256-sentence map sent
    # behind a /healthz on one connection, --read-timeout 2: closed at 2 s, no second answer; 2026-12-07).
    body = json.dumps({"sentences": [f"Writing SQL queries and Python scripts, case {i}" for i in range(256)]})
    with _serving(cli_store, tmp_path, "--read-timeout", "0.5") as (port, _, secret), \
            socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + (
            f"POST /v1/map HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secret}\r\nContent-Type: "
            f"application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode())
        sock.settimeout(60)
        data = b""
        while not (data.count(b"HTTP/1.1 200") == 2 and data.endswith(b"]}")):
            chunk = sock.recv(1 << 20)
            assert chunk, f"closed after {data.count(b'HTTP/1.1 ')} answer(s)"
            data += chunk


def test_serve_says_when_points_wait_for_an_index_and_the_index_command_builds_it(cli_store, tmp_path):
    # Indexing holds Python's lock for its whole run (30 s for 100,000 points), so the service cannot do it while it
    # answers: it says so, and `knnbe-qdrant index` does it (the store is one process's at a time).
    path = tmp_path / "store"
    shutil.copytree(cli_store, path)
    assert add_unindexed(path) >= 7000
    proc, _ = start_service(path, _free_port(), tmp_path / "serve.log")
    proc.terminate()
    proc.wait(timeout=30)
    assert "points curators added are not indexed" in (tmp_path / "serve.log").read_text()
    r = run("index", store=path)
    assert r.returncode == 0 and b"points added since the store was last indexed" in r.stderr, r.stderr
    assert b"points left unindexed" in r.stdout  # the small skills collection, under the threshold
    with EdgeStore(path) as store:
        assert store.unindexed() < 7000
    proc, _ = start_service(path, _free_port(), tmp_path / "again.log")
    proc.terminate()
    proc.wait(timeout=30)
    assert "not indexed" not in (tmp_path / "again.log").read_text()
