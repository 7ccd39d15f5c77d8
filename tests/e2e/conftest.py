"""Helpers for the end-to-end tests: run real `wtm` processes and compute ground truth.

Ground truth is computed here, in Python, straight from the lines `wtm generate` writes: no wtm
code is involved in counting, so a wrong count in the node cannot hide in the oracle.
"""

import collections
import re
import datetime as dt
import json
import os
import pathlib
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest
import shutil

ROOT = pathlib.Path(__file__).resolve().parents[2]
WTM = os.environ.get("WTM_BIN") or str(
    pathlib.Path(os.environ.get("CARGO_TARGET_DIR", pathlib.Path.home() / ".cache/wtm-target")) / "debug/wtm"
)
START = "2026-01-01T00:00:00Z"
WINDOW_MS = 60_000


# Ports handed out in this session. A port is free only until someone binds it, and a test often
# takes several before starting anything (a cluster's listen ports, then each node's HTTP port):
# the kernel may offer a port again meanwhile (seen: a node's HTTP port equal to another node's
# cluster port, "Address already in use"). So none is handed out twice.
_HANDED_OUT = set()


def free_port():
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def to_toml(cfg):
    out = []
    for section, values in cfg.items():
        out.append(f"[{section}]")
        for k, v in values.items():
            if "." in k:
                k = json.dumps(k)  # a librdkafka setting such as "session.timeout.ms"
            if isinstance(v, bool):
                v = "true" if v else "false"
            elif isinstance(v, (str, pathlib.Path)):
                v = json.dumps(str(v))
            out.append(f"{k} = {v}")
    return "\n".join(out) + "\n"


class Node:
    """One `wtm run` process on 127.0.0.1 with its own data directory."""

    def __init__(self, workdir, source, **sections):
        self.workdir = pathlib.Path(workdir)
        self.port = free_port()
        self.data = self.workdir / "data"
        source = dict(source)
        kafka_settings = source.pop("kafka", None)
        cfg = {
            "node": {"listen": f"127.0.0.1:{self.port}", "data_dir": self.data},
            "source": source,
        }
        if kafka_settings:
            cfg["source.kafka"] = kafka_settings
        cfg.update(sections)
        # With `[api] token`, every request this helper makes carries it.
        self.token = cfg.get("api", {}).get("token")
        self.config_sections = cfg
        self.config = self.workdir / "wtm.toml"
        self.config.write_text(to_toml(cfg))
        self.proc = None
        self.runs = 0

    @property
    def lake(self):
        lake = self.config_sections.get("lake", {}).get("path")
        return pathlib.Path(lake) if lake else self.data / "lake"

    def start(self, ready_within_s=60):
        self.runs += 1
        log = open(self.workdir / f"node-{self.runs}.log", "wb")
        self.proc = subprocess.Popen(
            [WTM, "run", "--config", str(self.config)], stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.time() + ready_within_s
        while time.time() < deadline:
            assert self.proc.poll() is None, f"node exited early: {self.log()}"
            try:
                status, _ = self.get("/readyz")
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"node not ready within {ready_within_s} s")

    def log(self):
        return (self.workdir / f"node-{self.runs}.log").read_text(errors="replace")[-4000:]

    def get(self, path, token=None):
        """GET `path` with `token` (default: the node's own, if it has one; "" for none)."""
        token = self.token if token is None else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                body = r.read()
                return r.status, (json.loads(body) if r.headers.get_content_type() == "application/json" else body)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def overview(self):
        status, body = self.get("/v1/overview")
        assert status == 200, body
        return body

    def wait_finished(self, timeout=300):
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, f"node died: {self.log()}"
            try:
                if self.overview()["finished"]:
                    return
            except (OSError, AssertionError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"node did not finish within {timeout} s: {self.log()}")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def finished_node(tmp_path_factory, name, source):
    """A node on `source` run to its end (for a module fixture: `yield from`); stopped after."""
    node = Node(tmp_path_factory.mktemp(name), source).start()
    node.wait_finished()
    yield node
    node.stop()


@pytest.fixture
def node_factory(tmp_path):
    nodes = []

    def make(source, name="node", **sections):
        d = tmp_path / name
        d.mkdir()
        n = Node(d, source, **sections)
        nodes.append(n)
        return n

    yield make
    for n in nodes:
        n.stop()


def settled(node, path):
    """The answer once the detector has judged the last windows (two equal reads 1 s apart)."""
    last = None
    for _ in range(60):
        status, body = node.get(path)
        assert status == 200, body
        if body == last:
            return body
        last = body
        time.sleep(1)
    raise AssertionError("the detector did not settle")


def duck():
    """A DuckDB connection that reads Delta tables (`delta_scan`): the extension comes from PyPI
    (`duckdb-ext-delta`, its signed binary in DuckDB's extension-directory layout), since
    DuckDB's own download site is not reachable here."""
    import duckdb
    import importlib.util

    spec = importlib.util.find_spec("duckdb_ext")
    ext_dir = pathlib.Path(list(spec.submodule_search_locations)[0]) / "extensions"
    con = duckdb.connect(config={"extension_directory": str(ext_dir)})
    con.execute("LOAD delta")
    # A query over 2 s draws a progress bar on stdout, which a test reading a child's stdout as
    # JSON took for data (test_lake_upkeep's poller, on a loaded 2-core box).
    con.execute("SET enable_progress_bar = false")
    return con


def generate(path, **flags):
    args = [WTM, "generate", "--out", str(path)]
    for k, v in flags.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    subprocess.run(args, check=True)
    return path


def parse_ts(s):
    return int(dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() * 1000)


VHOST = re.compile(
    rb'^(\S+?)(?::\d+)? (\S+) \S+ \S+ \[([^\]]+)\] "(\S+) (\S+)[^"]*" (\d{3}) (\d+|-)'
    rb'(?: "((?:[^"\\]|\\.)*)" "((?:[^"\\]|\\.)*)"(?: ([\d.]+))?)?$'
)


def parse_vhost(line):
    """An independent reading of one vhost_combined line (None if malformed)."""
    m = VHOST.match(line.rstrip())  # trailing whitespace is not part of a record
    if not m:
        return None
    t = dt.datetime.strptime(m.group(3).decode(), "%d/%b/%Y:%H:%M:%S %z")
    return {
        "ts_ms": int(t.timestamp() * 1000),
        "host": m.group(1).decode(),
        "status": int(m.group(6)),
        "bytes": 0 if m.group(7) == b"-" else int(m.group(7)),
        "latency_ms": round(float(m.group(10)) * 1000) if m.group(10) else None,
        "client_ip": m.group(2).decode(),
    }


class Truth:
    """Per (host, window start ms) counts of the generated events, and the malformed lines."""

    def __init__(self, path, fmt="json"):
        self.windows = collections.defaultdict(lambda: {"requests": 0, "bytes": 0, "status": [0] * 5})
        self.latencies = collections.defaultdict(list)
        self.clients = collections.defaultdict(set)
        self.malformed = 0
        self.events = 0
        with open(path, "rb") as f:
            for line in f:
                if fmt == "json":
                    try:
                        e = json.loads(line)
                        e["ts_ms"] = parse_ts(e["ts"])
                    except ValueError:
                        e = None
                else:
                    e = parse_vhost(line)
                if e is None:
                    self.malformed += 1
                    continue
                self.events += 1
                ts = e["ts_ms"]
                key = (e["host"], ts - ts % WINDOW_MS)
                w = self.windows[key]
                w["requests"] += 1
                w["bytes"] += e["bytes"]
                w["status"][e["status"] // 100 - 1] += 1
                self.latencies[key].append(e["latency_ms"])
                self.clients[key].add(e["client_ip"])


def exact_quantile(values, q):
    s = sorted(values)
    return s[int((len(s) - 1) * q)]


class Broker:
    """A genuine Apache Kafka broker (KRaft) started by scripts/kafka in its own directory."""

    def __init__(self, data_dir):
        self.data_dir = pathlib.Path(data_dir)
        self.bootstrap = None

    def start(self):
        out = subprocess.run(
            [str(ROOT / "scripts/kafka"), "start", "--data-dir", str(self.data_dir)],
            check=True, capture_output=True, text=True, timeout=300,
        ).stdout
        self.bootstrap = next(l.split("=", 1)[1] for l in out.splitlines() if l.startswith("bootstrap="))
        return self

    def stop(self):
        subprocess.run([str(ROOT / "scripts/kafka"), "stop", "--data-dir", str(self.data_dir)], check=True,
                       capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    b = Broker(tmp_path_factory.mktemp("kafka")).start()
    yield b
    b.stop()


def chromium_path():
    path = os.environ.get("WTM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Debian's chromium is needed (scripts/test installs it)"
    return path


@pytest.fixture(scope="session")
def browser():
    """Debian's headless Chromium, driven by Playwright (its own browser download cannot work here)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        yield b
        b.close()


class Page:
    """A browser page that records console errors, uncaught exceptions and failed requests."""

    def __init__(self, browser, base, scheme="light"):
        self.base = base
        self.page = browser.new_page(viewport={"width": 1280, "height": 800}, color_scheme=scheme)
        self.problems = []
        self.page.on("console", lambda m: self.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.problems.append(f"uncaught: {e}"))
        self.page.on("requestfailed", lambda r: self.problems.append(f"request failed: {r.url} {r.failure}"))
        self.page.on("response", lambda r: self.problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)

    def open(self, hash_="#/"):
        self.page.goto(self.base + "/" + hash_)

    def loaded_since(self, after_ms):
        """Wait until the current view has (re)loaded its data after `after_ms` (epoch ms)."""
        self.page.wait_for_function(
            "t => { const v = document.querySelector('#main > div'); return v && Number(v.dataset.loadedAt || 0) > t; }",
            arg=after_ms, timeout=30000)

    def close(self):
        problems = list(self.problems)  # closing aborts the stream: not a problem of the page
        self.page.close()
        assert problems == [], problems
