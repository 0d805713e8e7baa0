"""Hardening: the review server. Where it listens, what --auth protects (every route of
the running app, enumerated), which files its file routes serve (crafted paths,
symlinks out of the roots), no share link unless asked, and a load of two clients
making 2 x 500 decisions at once through the API.

`RawClient` speaks Gradio's queue protocol over plain HTTP (join + server-sent events),
~40 ms a call where gradio_client takes ~150 ms: what makes 1000 decisions affordable."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

for _k, _v in (("GRADIO_ANALYTICS_ENABLED", "False"), ("HF_HUB_OFFLINE", "1"),
               ("HF_HUB_DISABLE_TELEMETRY", "1")):
    os.environ.setdefault(_k, _v)
os.environ.setdefault("GRADIO_TEMP_DIR", tempfile.mkdtemp(prefix="comining-gradio-"))

import httpx  # noqa: E402
import pytest  # noqa: E402

from comining import store  # noqa: E402
from comining.cli import build_parser  # noqa: E402
from conftest import REPO  # noqa: E402
from review_fixtures import free_port, make_run, serve  # noqa: E402

LAYERS = ["annotated", "original", "augmented", "both", "decided"]
PENDING = re.compile(r"\*\*(\d+)\*\* pending of")


class RawClient:
    """One browser session of the app, over Gradio's HTTP queue API."""

    def __init__(self, url: str, auth: tuple[str, str] | None = None):
        self.url = url if url.endswith("/") else url + "/"
        self.http = httpx.Client(timeout=120)
        if auth:
            r = self.http.post(self.url + "login", data={"username": auth[0], "password": auth[1]})
            r.raise_for_status()
        config = self.http.get(self.url + "config")
        config.raise_for_status()
        config = config.json()
        self.deps = {d.get("api_name"): (i, d) for i, d in enumerate(config["dependencies"])}
        self.state_ids = {c["id"] for c in config["components"] if c.get("type") == "state"}
        self.session = uuid.uuid4().hex[:11]

    def call(self, api_name: str, *data):
        """Call an event with the values of its non-State inputs; returns all its
        outputs (State outputs come back as None)."""
        fn_index, dep = self.deps[api_name]
        values = iter(data)
        full = [None if i in self.state_ids else next(values) for i in dep["inputs"]]
        payload = {"data": full, "fn_index": fn_index,
                   "session_hash": self.session, "event_data": None,
                   "trigger_id": dep["targets"][0][0] if dep.get("targets") else None}
        r = self.http.post(self.url + "gradio_api/queue/join", json=payload)
        r.raise_for_status()
        event_id = r.json()["event_id"]
        with self.http.stream("GET", self.url + "gradio_api/queue/data",
                              params={"session_hash": self.session}) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:])
                if msg.get("event_id") == event_id and msg.get("msg") == "process_completed":
                    if not msg.get("success"):
                        raise RuntimeError(f"{api_name} failed: {msg.get('output')}")
                    return msg["output"]["data"]
        raise RuntimeError(f"{api_name}: the event stream ended without a result")


def decide_loop(client: RawClient, n: int, action: str = "accept") -> dict:
    """Make `n` decisions (accept or reject) the way an annotator does: decide the
    selected candidate, go to the next image when this one has nothing pending.
    Returns {'decided': [candidate ids in order], 'latency': [s], 'error': None|str}."""
    res = {"decided": [], "latency": [], "error": None}
    try:
        out = client.call("load", 0.8)
        refills = 0
        while len(res["decided"]) < n:
            m = PENDING.search(out[2] or "")
            selected = (out[3] or {}).get("value") if isinstance(out[3], dict) else None
            if not m or int(m.group(1)) == 0 or selected is None:
                out = client.call("next_image", LAYERS, True)
                if "End of the queue" in (out[2] or "") or "Queue empty" in (out[2] or "") \
                        or PENDING.search(out[2] or "") is None:
                    refills += 1
                    if refills > 50:
                        raise RuntimeError("ran out of candidates")
                    out = client.call("filters", "score", [], [], 0.0, 1.0, ["pending"], False,
                                      "missing", LAYERS, True, 0.8)
                continue
            t = time.perf_counter()
            out = client.call(action, None, LAYERS, True, 0.8)
            res["latency"].append(time.perf_counter() - t)
            res["decided"].append(int(selected))
    except Exception as exc:  # reported by the test
        res["error"] = f"{type(exc).__name__}: {exc}"
    return res


def decisions_by_client(run_dir) -> dict[str, list[int]]:
    import sqlite3
    conn = sqlite3.connect(Path(run_dir) / store.STORE_NAME)
    try:
        out: dict[str, list[int]] = {}
        for client, cid in conn.execute("SELECT client, candidate_id FROM decisions "
                                        "WHERE undone = 0 ORDER BY id"):
            out.setdefault(client, []).append(cid)
        return out
    finally:
        conn.close()


# ----------------------------------------------------------------------------- where it listens


def _listening_addresses(port: int) -> list[str]:
    """Local addresses of the TCP sockets listening on `port` (from /proc/net/tcp{,6})."""
    found = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local, state = parts[1], parts[3]
            addr, p = local.split(":")
            if state == "0A" and int(p, 16) == port:          # 0A: LISTEN
                if len(addr) == 8:
                    found.append(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
                else:
                    found.append(addr)
    return found


def _other_local_address() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))   # no packet is sent; picks a local interface
            ip = s.getsockname()[0]
        return None if ip.startswith("127.") else ip
    except OSError:
        return None


def test_listens_on_loopback_only_and_makes_no_share_link_by_default(tmp_path, monkeypatch):
    import gradio.networking as networking

    tunnels = []
    if hasattr(networking, "setup_tunnel"):
        monkeypatch.setattr(networking, "setup_tunnel", lambda *a, **k: tunnels.append(a))
    args = build_parser().parse_args(["review", "--run", "r"])
    assert (args.host, args.share, args.auth) == ("127.0.0.1", False, None)
    info = make_run(tmp_path, n_images=1)
    with serve(info.run_dir) as (demo, url):
        port = urllib.parse.urlparse(url).port
        assert demo.server_name == "127.0.0.1" and not demo.share and demo.share_url is None
        assert url.startswith("http://127.0.0.1:")
        if Path("/proc/net/tcp").exists():
            assert _listening_addresses(port) == ["127.0.0.1"]
        other = _other_local_address()
        if other:
            with pytest.raises(OSError):
                socket.create_connection((other, port), timeout=2).close()
        assert httpx.get(url).status_code == 200
    assert tunnels == []


# ----------------------------------------------------------------------------- --auth

# Routes that answer without a login, and why that is harmless: the login page and the
# static files it needs, Gradio's generic descriptions (no data of the run), and routes
# that only act on a session's or event's random id.
PUBLIC = {   # (a trailing slash is the same route)
    "/": "the login page", "/favicon.ico": "static", "/theme.css": "static",
    "/gradio_api/theme.css": "static", "/robots.txt": "static", "/manifest.json": "app title",
    "/assets/{path:path}": "static", "/static/{path:path}": "static", "/svelte/{path:path}": "static",
    "/pwa_icon": "static", "/pwa_icon/{size}": "static", "/login": "the login",
    "/logout": "the logout", "/openapi.json": "Gradio's generic route schema",
    "/gradio_api/app_id": "a random id",
    "/gradio_api/token": "the caller's own token (none)",
    "/gradio_api/user": "the caller's own user (none)",
    "/gradio_api/startup-events": "a flag", "/gradio_api/runs": "an empty page shell",
    "/gradio_api/heartbeat/{session_hash}": "a keep-alive of one random session id",
    "/gradio_api/cancel": "cancels one random event id", "/gradio_api/reset": "same",
    "/gradio_api/stream/{event_id}": "one random event id",
    "/gradio_api/stream/{event_id}/close": "same",
    "/gradio_api/custom_component/{id}/{environment}/{type}/{file_name}": "component assets",
    "/monitoring/{key}": "disabled (403)",
}
DENIED = {401, 403, 404, 405, 422}


def _routes(app, prefix=""):
    for r in app.routes if hasattr(app, "routes") else app:
        if hasattr(r, "original_router"):      # FastAPI's included routers
            yield from _routes(r.original_router.routes, prefix + r.include_context.prefix)
        elif hasattr(r, "path"):
            yield prefix + r.path, sorted(getattr(r, "methods", None) or ["GET"])


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def test_auth_guards_every_route_and_leaks_nothing(tmp_path):
    info = make_run(tmp_path, n_images=2)
    secrets = [str(info.ann_path), str(info.images_dir), "000001.png", "disc", "triangle",
               str(info.run_dir / "comining.sqlite")]
    with serve(info.run_dir, auth=("ann", "s3cret")) as (demo, url):
        base = url.rstrip("/")
        routes = sorted(set((p, tuple(m)) for p, m in _routes(demo.server_app)))
        assert len(routes) > 30
        anon = httpx.Client(timeout=3)
        checked = []
        for path, methods in routes:
            if "heartbeat" in path:      # an endless event stream: only its first bytes
                with anon.stream("GET", base + _concrete(path)) as r:
                    assert r.status_code in DENIED | {200}
                continue
            for method in methods:
                if method == "HEAD":
                    continue
                body = {"session_hash": "x", "fn_index": 0, "event_id": "x", "data": [],
                        "hash": "x"} if method == "POST" else None
                r = anon.request(method, base + _concrete(path), json=body)
                checked.append((method, path, r.status_code))
                for s in secrets:
                    assert not re.search(rf"(?<![\w/]){re.escape(s)}(?!\w)", r.text), \
                        (method, path, s)
                if (path.rstrip("/") or "/") not in PUBLIC:
                    assert r.status_code in DENIED, (method, path, r.status_code, r.text[:200])
        # what matters most, named explicitly
        for path in ("/config", "/gradio_api/info", "/gradio_api/queue/join", "/gradio_api/upload",
                     "/gradio_api/file=/etc/passwd", "/gradio_api/call/accept",
                     "/gradio_api/run/accept", "/gradio_api/queue/data", "/monitoring"):
            method = "POST" if path.endswith(("join", "upload", "accept")) else "GET"
            r = anon.request(method, base + path, json={} if method == "POST" else None)
            assert r.status_code == 401, (path, r.status_code)
        bad = httpx.Client(timeout=10)
        r = bad.post(base + "/login", data={"username": "ann", "password": "wrong"})
        assert r.status_code in (400, 401)
        assert bad.get(base + "/config").status_code == 401
        # with the login, the API works, class names included (the page gets them on load)
        client = RawClient(url, auth=("ann", "s3cret"))
        out = client.call("load", 0.8)
        assert "Image 1 / 2" in out[2]
        assert [c[1] for c in out[4]["choices"]] == ["disc", "square", "triangle"]
        out = client.call("accept", "triangle", LAYERS, True, 0.8)
        assert "**1** accepted" in out[5]
    by_client = decisions_by_client(info.run_dir)
    assert len(by_client) == 1 and next(iter(by_client)).startswith("ann-")   # the login's name
    import sqlite3
    conn = sqlite3.connect(info.run_dir / store.STORE_NAME)
    assert conn.execute("SELECT category_id FROM decisions").fetchall() == [(3,)]
    conn.close()


# ----------------------------------------------------------------------------- file routes


def test_file_routes_serve_only_the_apps_own_files(tmp_path):
    """Crafted paths through every file route: absolute, ../, encoded, the run's inputs,
    symlinks out of the image root and out of the exports folder. Only what the app
    itself produced (the rendered image, an export) is served."""
    info = make_run(tmp_path, n_images=2)
    exports = info.run_dir / "exports"
    exports.mkdir()
    os.symlink("/etc/passwd", exports / "leak.json")
    os.symlink(info.run_dir, exports / "run_link")
    os.symlink("/etc/passwd", info.images_dir / "evil.png")
    os.symlink(info.run_dir, info.images_dir / "run_link")
    gradio_tmp = os.environ["GRADIO_TEMP_DIR"]
    targets = ["/etc/passwd", "../../../../../../etc/passwd", "..%2f..%2f..%2f..%2fetc%2fpasswd",
               "%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "....//....//etc/passwd",
               "//etc/passwd", "\\..\\..\\etc\\passwd", "file:///etc/passwd",
               str(info.ann_path), str(info.hidden_path), str(info.run_dir / "config.json"),
               str(info.run_dir / "comining.sqlite"), str(info.images_dir / "000001.png"),
               str(info.images_dir / "evil.png"), str(info.images_dir / "run_link" / "config.json"),
               str(exports / "leak.json"), str(exports / "run_link" / "comining.sqlite"),
               str(exports / ".." / "comining.sqlite"), str(exports) + "/%2e%2e/comining.sqlite",
               f"{gradio_tmp}/../../../etc/passwd", f"{gradio_tmp}/x/../../../../etc/passwd",
               "http://127.0.0.1:1/", "https://example.com/x.png"]
    routes = ["gradio_api/file=", "file=", "gradio_api/file/", "gradio_api/proxy=", "proxy="]
    with serve(info.run_dir) as (_, url):
        h = httpx.Client(timeout=10)
        for target in targets:
            for route in routes:
                for t in (target, urllib.parse.quote(target, safe="")):
                    r = h.get(url + route + t)
                    assert r.status_code in (400, 403, 404, 405, 422), (route, t, r.status_code)
                    assert "root:" not in r.text and "SQLite format" not in r.text, (route, t)
        # positive controls: the rendered image and an export made by the app
        client = RawClient(url)
        out = client.call("load", 0.8)
        image_url = out[1]["url"]
        r = h.get(image_url)
        assert r.status_code == 200 and r.headers["content-type"].startswith("image/")
        out = client.call("export", "reviewed", 0.0, "last")
        assert "added 0 boxes" in out[0]
        r = h.get(out[1]["url"])
        assert r.status_code == 200 and json.loads(r.text)["images"]


# ----------------------------------------------------------------------------- load


def test_two_clients_making_2x500_decisions_at_once(tmp_path):
    """Two annotators at once, 500 decisions each through the API (one accepting, one
    rejecting, mostly on the same images) of a `comining review` process: every
    decision recorded exactly once."""
    info = make_run(tmp_path, n_images=130, width=160, height=120, n_objects=6, n_annotated=2,
                    n_false=6)
    app, url = start_app(info.run_dir)
    try:
        clients = [RawClient(url), RawClient(url)]
        results = [{}, {}]
        barrier = threading.Barrier(2)

        def work(k):
            barrier.wait()
            results[k] = decide_loop(clients[k], 500, "accept" if k == 0 else "reject")

        threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = time.perf_counter() - start
    finally:
        stop_app(app)
    for res in results:
        assert res["error"] is None, res["error"]
        assert len(res["decided"]) == 500
    got = decisions_by_client(info.run_dir)
    assert len(got) == 2 and sum(len(v) for v in got.values()) == 1000
    assert sorted(sorted(v) for v in got.values()) == sorted(sorted(r["decided"]) for r in results)
    for v in got.values():                       # nobody decided the same candidate twice
        assert len(set(v)) == len(v)
    lat = sorted(x for r in results for x in r["latency"])
    print(f"\n2 x 500 decisions in {took:.1f} s; per call p50 {1000 * lat[len(lat) // 2]:.0f} ms, "
          f"p95 {1000 * lat[int(0.95 * len(lat))]:.0f} ms")


# ----------------------------------------------------------------------------- processes


def start_app(run_dir, *extra) -> tuple[subprocess.Popen, str]:
    """`comining review --run RUN_DIR` in its own process on a free port; (process, url)."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "comining", "review", "--run", str(run_dir),
                             "--port", str(port), *extra], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            # stop_app's Ctrl+C must not stay ignored when whatever ran the
                            # suite ignores SIGINT (a background job)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    line = proc.stdout.readline()
    if f"127.0.0.1:{port}" not in line:
        proc.kill()
        raise AssertionError(line + proc.stdout.read())
    threading.Thread(target=proc.stdout.read, daemon=True).start()   # keep the pipe drained
    return proc, f"http://127.0.0.1:{port}/"


def stop_app(proc) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:  # pragma: no cover
        proc.kill()
        proc.wait()
