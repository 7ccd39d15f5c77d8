"""Hostile input: records and fields bounded, implausible sites dead-lettered, nothing lost.
Ground truth is written by the test itself."""

import hashlib
import http.client
import json
import os
import pathlib
import random
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import START, WTM
from test_pipeline import q

RSS_BOUND_MB = 300


def batch_with_peak_rss(data_dir, *files, extra=()):
    """`wtm batch` in a fresh Python process whose only child it is: (result, peak RSS in MB)."""
    probe = ("import json, resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "print(json.dumps([r.returncode, r.stdout, r.stderr, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))")
    out = subprocess.run(
        [sys.executable, "-c", probe, WTM, "batch", "--quiet", "--json", "--data-dir", str(data_dir), *extra,
         *map(str, files)],
        capture_output=True, text=True, timeout=900, check=True,
    )
    code, stdout, stderr, rss_kb = json.loads(out.stdout)
    assert code == 0, stderr
    return json.loads(stdout), rss_kb / 1024


def event(ts, host, path="/", **extra):
    return json.dumps(dict(ts=ts, host=host, method="GET", path=path, status=200, bytes=10, **extra))


def test_huge_lines_random_bytes_and_bad_hosts_are_dead_lettered_in_bounded_memory(tmp_path):
    rng = random.Random(16)
    start = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    good = 3000
    path = tmp_path / "hostile.log"
    garbage = 0
    with open(path, "wb") as f:
        for i in range(good):
            f.write(event(start + i * 100, f"site-{i % 3}.example").encode() + b"\n")
            if i == 500:
                f.write(b"A" * (50 << 20) + b"\n")  # a 50 MB line
            if i % 300 == 7:
                # Random bytes without a newline in them: some other reason, never an event.
                f.write(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))).replace(b"\n", b" ") + b"\n")
                garbage += 1
        # Implausible sites; a path, a user agent and a referrer far past the field limit.
        f.write(event(start, "<script>alert(1)</script>").encode() + b"\n")
        f.write(event(start, "shop.example:99999999").encode() + b"\n")
        f.write(event(start + good * 100, "site-0.example", path="/" + "p" * 10_000, user_agent="u" * 5000,
                      referrer="r" * 3000).encode() + b"\n")
        # The last line: 300 MB without a newline.
        chunk = b"B" * (1 << 20)
        for _ in range(300):
            f.write(chunk)

    summary, rss_mb = batch_with_peak_rss(tmp_path / "out", path)
    assert rss_mb < RSS_BOUND_MB, f"peak RSS {rss_mb:.0f} MB"
    assert summary["events"] == good + 1, summary
    by_reason = summary["invalid"]
    assert by_reason.get("too_long") == 2, by_reason
    assert by_reason.get("bad_host") == 2, by_reason
    assert summary["invalid_total"] == 2 + 2 + garbage, summary
    assert summary["lines"] == good + 2 + garbage + 3

    lake = tmp_path / "out" / "lake"
    rows = q(lake, "select reason, octet_length(raw), detail from '{lake}/invalid/*/*/*.parquet' order by \"offset\"")
    assert len(rows) == summary["invalid_total"]
    too_long = [r for r in rows if r[0] == "too_long"]
    assert [r[1] for r in too_long] == [1024, 1024]
    assert f"{50 << 20} bytes" in too_long[0][2] and f"{300 << 20} bytes" in too_long[1][2], too_long
    (requests,) = q(lake, "select sum(requests) from '{lake}/windows/*/*/*.parquet'")[0]
    assert requests == good + 1 and summary["late"] == 0, "every event read is in a window"
    keys = [e["key"] for (top,) in q(lake, "select top_paths from '{lake}/windows/*/*/*.parquet'")
            for e in json.loads(top)]
    cut = [k for k in keys if k.endswith("…")]
    assert len(cut) == 1 and len(cut[0].encode()) <= 2048, [len(k) for k in cut]
    assert all(len(k.encode()) <= 2048 for k in keys)


API_SOURCE = dict(seed=2, hosts=4, rate=100.0, realtime=False, start=START, duration_s=600, anomalies=0)


def raw_get(port, path, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path, headers=headers or {})
    r = conn.getresponse()
    # A server-sent event stream never ends: its first line says it answered.
    body = r.readline() if r.headers.get_content_type() == "text/event-stream" else r.read()
    conn.close()
    return r.status, r.headers, body


def test_api_tokens_guard_every_route_but_healthz_and_bounds_requests(node_factory, tmp_path):
    token, hashed_one = "first-token-0123456789", "second-token-9876543210"
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# API tokens\n{token}\nsha256:{hashlib.sha256(hashed_one.encode()).hexdigest()}  # ci\n")
    node = node_factory(API_SOURCE, api={"tokens_file": str(tokens)})
    node.token = token
    node.start()
    node.wait_finished()
    status, spec = node.get("/openapi.json")
    assert status == 200
    host = node.get("/v1/hosts")[1]["hosts"][0]["host"]
    paths = [p.replace("{host}", host) + ("?dimension=path" if p.endswith("/top") else "")
             for p, ops in spec["paths"].items() if "get" in ops]
    paths += ["/openapi.json", "/docs"]
    assert "/v1/hosts" in paths and "/healthz" in paths
    for path in paths:
        if path == "/healthz":
            assert raw_get(node.port, path)[0] == 200
            continue
        for bad in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": f"Basic {token}"}):
            status, headers, body = raw_get(node.port, path, bad)
            assert status == 401, (path, bad, status)
            assert headers["WWW-Authenticate"] == "Bearer" and b"bearer token" in body
            assert token.encode() not in body
        for good in (token, hashed_one):
            status, _, body = raw_get(node.port, path, {"Authorization": f"Bearer {good}"})
            assert status == 200, (path, status, body[:200])
    # /metrics is open unless api.protect_metrics (Prometheus scrapes it).
    assert raw_get(node.port, "/metrics")[0] == 200
    # The dashboard's page and scripts hold no data: served without a token (the page asks for
    # one, and /v1/stream, in the loop above, wants it).
    assert "/v1/stream" in paths
    for path in ("/", "/ui/app.js"):
        assert raw_get(node.port, path)[0] == 200
    assert token not in node.log() and hashed_one not in node.log()

    # A huge request line or head is refused, and the node goes on answering.
    status, _, _ = raw_get(node.port, "/v1/hosts?x=" + "a" * (1 << 20), {"Authorization": f"Bearer {token}"})
    assert status in (414, 431), status
    # A thousand idle connections do not keep a client from being answered.
    idle = [socket.create_connection(("127.0.0.1", node.port)) for _ in range(1000)]
    try:
        started = time.time()
        assert node.get("/v1/overview")[0] == 200
        assert time.time() - started < 2
    finally:
        for s in idle:
            s.close()
    # `wtm probe` carries the token from the environment.
    env = dict(os.environ, WTM__API__TOKEN=token)
    probe = [WTM, "probe", f"http://127.0.0.1:{node.port}/readyz"]
    assert subprocess.run(probe, env=env, capture_output=True).returncode == 0
    assert subprocess.run(probe, capture_output=True).returncode != 0


def test_bad_token_settings_fail_at_startup_naming_the_key(tmp_path):
    env = dict(os.environ, WTM__API__TOKEN="short")
    r = subprocess.run([WTM, "config"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode != 0 and "api.token" in r.stderr, r.stderr
    env = dict(os.environ, WTM__API__TOKENS_FILE=str(tmp_path / "missing"))
    r = subprocess.run([WTM, "config"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode != 0 and "api.tokens_file" in r.stderr, r.stderr
    env = dict(os.environ, WTM__API__TOKEN="a-long-enough-token-123")
    r = subprocess.run([WTM, "config"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and "a-long-enough-token-123" not in r.stdout and "<redacted>" in r.stdout


def test_a_spray_of_distinct_sites_folds_into_other_and_every_event_stays_counted(tmp_path, node_factory):
    start = 1_767_225_600_000
    n = 200_000
    path = tmp_path / "spray.log"
    rng = random.Random(5)
    with open(path, "w") as f:
        for i in range(n):
            host = "%016x.example" % rng.getrandbits(64)
            f.write(event(start + i * 3, host) + "\n")  # 10 minutes of event time
    cfg = tmp_path / "wtm.toml"
    cfg.write_text("[limits]\nmax_hosts = 1000\n")
    summary, rss_mb = batch_with_peak_rss(tmp_path / "out", path, extra=("--config", str(cfg)))
    assert rss_mb < RSS_BOUND_MB, f"peak RSS {rss_mb:.0f} MB"
    assert summary["events"] == n and summary["invalid_total"] == 0 and summary["late"] == 0
    lake = tmp_path / "out" / "lake"
    (requests,) = q(lake, "select sum(requests) from '{lake}/windows/*/*/*.parquet'")[0]
    assert requests == n, "nothing dropped: named sites and (other) add up to every event"
    per_window = q(lake, """select epoch_ms(window_start), count(*) filter (host <> '(other)'), sum(requests) filter (host = '(other)')
                            from '{lake}/windows/*/*/*.parquet' group by 1 order by 1""")
    assert len(per_window) == 10
    assert all(named == 1000 and other > 0 for _, named, other in per_window), per_window
    (dupes,) = q(lake, """select count(*) from (select host, window_start, partition, count(*) n
                          from '{lake}/windows/*/*/*.parquet' group by all having n > 1)""")[0]
    assert dupes == 0, "one row per (site, window, partition), the overflow series too"

    # A node says so in its overview, and its site list still adds up.
    node = node_factory(dict(API_SOURCE, hosts=200), limits={"max_hosts": 20}).start()
    node.wait_finished()
    o = node.overview()
    assert o["hosts_overflow"] and o["hosts"] <= 20 * 10 + 1, o["hosts"]
    hosts = node.get("/v1/hosts?windows=10000")[1]["hosts"]
    assert sum(h["requests"] for h in hosts) == o["events"] - o["late"]
    assert "(other)" in {h["host"] for h in hosts}


def test_the_guard_folds_the_same_events_after_a_crash(node_factory):
    """A replay from a checkpoint folds exactly what the first run did: the lake of a node
    SIGKILLed twice equals that of a node that ran through."""
    source = dict(API_SOURCE, hosts=200, duration_s=1200)
    settings = dict(limits={"max_hosts": 20}, checkpoint={"interval_ms": 200}, lake={"flush_interval_ms": 700})
    calm = node_factory(source, name="calm", **settings).start()
    calm.wait_finished()
    events = calm.overview()["events"]
    crashed = node_factory(source, name="crashed", **settings).start()
    for share in (0.3, 0.7):
        while crashed.overview()["events"] < share * events:
            time.sleep(0.01)
        crashed.kill()
        crashed.start()
    crashed.wait_finished()
    rows = "select host, epoch_ms(window_start), partition, requests, bytes, status_5xx from '{lake}/windows/*/*/*.parquet' order by all"
    a, b = q(calm.lake, rows), q(crashed.lake, rows)
    assert any(r[0] == "(other)" for r in a) and a == b


def test_the_api_over_tls_reloads_its_certificate_on_sighup(node_factory, tmp_path):
    import ssl
    from test_cluster import make_ca, make_cert
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = make_ca(pki, "api-ca")
    cert, key = make_cert(pki, "api", ca)
    live_cert, live_key = pki / "live.pem", pki / "live.key"
    live_cert.write_bytes(cert.read_bytes())
    live_key.write_bytes(key.read_bytes())
    node = node_factory(API_SOURCE, api={"token": "tls-test-token-0123456789"},
                        **{"api.tls": {"cert": str(live_cert), "key": str(live_key)}})
    node.proc = subprocess.Popen([WTM, "run", "--config", str(node.config)], stdout=open(tmp_path / "tls.log", "wb"),
                                 stderr=subprocess.STDOUT)
    context = ssl.create_default_context(cafile=str(ca[0]))

    def serial():
        with socket.create_connection(("127.0.0.1", node.port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                der = s.getpeercert(binary_form=True)
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert s.recv(64).startswith(b"HTTP/1.1 200")
                return hashlib.sha256(der).hexdigest()

    deadline = time.time() + 60
    while True:
        try:
            first = serial()
            break
        except OSError:
            assert node.proc.poll() is None and time.time() < deadline, (tmp_path / "tls.log").read_text()
            time.sleep(0.1)
    # Plain HTTP gets no answer from a TLS listener.
    with pytest.raises((OSError, http.client.HTTPException)):
        raw_get(node.port, "/healthz")
    probe = [WTM, "probe", f"https://127.0.0.1:{node.port}/readyz", "--ca", str(ca[0])]
    env = dict(os.environ, WTM__API__TOKEN="tls-test-token-0123456789")
    assert subprocess.run(probe, env=env, capture_output=True).returncode == 0
    # A renewed certificate is served after SIGHUP, without a restart.
    renewed, renewed_key = make_cert(pki, "api2", ca)
    live_cert.write_bytes(renewed.read_bytes())
    live_key.write_bytes(renewed_key.read_bytes())
    node.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 10
    while serial() == first:
        assert time.time() < deadline, "the renewed certificate is not served"
        time.sleep(0.2)
    assert node.proc.poll() is None


def test_a_spray_and_huge_records_through_kafka(broker, node_factory):
    """The same bounds on the Kafka path: a record over limits.max_record_bytes is dead-lettered
    as too_long, and a spray of new sites folds into (other) with every event still counted."""
    from confluent_kafka import Producer
    from test_kafka import FAST, kafka_source, new_topic, wait_for

    topic = new_topic(broker, "spray")
    producer = Producer({"bootstrap.servers": broker.bootstrap, "message.max.bytes": 2_000_000})
    start, n, rng = 1_767_225_600_000, 30_000, random.Random(9)
    for i in range(n):
        producer.produce(topic, event(start + i * 20, "%012x.example" % rng.getrandbits(48)).encode())
        if i % 10_000 == 5:
            producer.produce(topic, b"{" + b" " * 200_000 + b"}")  # too long
        producer.poll(0)
    producer.flush(30)
    node = node_factory(kafka_source(broker, topic), limits={"max_hosts": 300}, **FAST).start()

    def read_all():
        o = node.overview()
        return o["events"] + o["invalid_total"] == n + 3 and o["windows_closed"] > 0
    wait_for(read_all, 120, "every record read")
    o = node.overview()
    assert o["events"] == n and o["invalid"] == {"too_long": 3} and o["hosts_overflow"], o
    wait_for(lambda: sum(h["requests"] for h in node.get("/v1/hosts?windows=10000")[1]["hosts"]) == n - o["late"],
             60, "every event in a series")
    # Dead letters reach the lake with the owner's next flush of records (every
    # lake.flush_interval), not with the windows the series counts.
    wait_for(lambda: any(pathlib.Path(node.lake).glob("invalid/*/*/*.parquet")), 60, "the dead letters in the lake")
    (kept,) = q(node.lake, "select max(octet_length(raw)) from '{lake}/invalid/*/*/*.parquet'")[0]
    assert kept == 1024
