"""Observability: a real Prometheus (scripts/prometheus) scrapes a running Kafka node; every metric
any Grafana dashboard panel queries must exist there, so a renamed metric cannot silently blank a
panel; and `promtool check metrics` accepts the node's exposition."""

import json
import pathlib
import re
import subprocess
import time
import urllib.parse
import urllib.request

from conftest import ROOT, WTM, free_port
from test_kafka import FAST, kafka_source, new_topic, owned, wait_for

DASHBOARDS = sorted((ROOT / "deploy/grafana/dashboards").glob("*.json"))


def dashboard_metrics():
    """Metric names in every panel's PromQL, with the histogram/counter suffixes Prometheus sees."""
    names = set()
    for path in DASHBOARDS:
        d = json.loads(path.read_text())
        for panel in d["panels"]:
            for t in panel.get("targets", []):
                names |= set(re.findall(r"\bwtm_[a-z0-9_]+", t["expr"]))
    return names


def prom_query(url, q):
    with urllib.request.urlopen(f"{url}/api/v1/query?query={urllib.parse.quote(q)}", timeout=10) as r:
        return json.loads(r.read())["data"]["result"]


def test_every_dashboard_metric_exists_in_prometheus(broker, node_factory, tmp_path):
    assert len(DASHBOARDS) == 4
    topic = new_topic(broker, "metrics")
    subprocess.run([WTM, "generate", "--kafka", broker.bootstrap, "--topic", topic, "--count", "20000",
                    "--hosts", "10", "--rate", "200", "--malformed-share", "0.01", "--seed", "3"], check=True)
    # Two nodes in one cluster, so the cluster dashboard's metrics (fan-out calls, shares sent to
    # homes) have data too.
    ports = [free_port(), free_port()]
    nodes = []
    for i, name in enumerate(["m1", "m2"]):
        n = node_factory(kafka_source(broker, topic), name=name, **FAST,
                         cluster={"listen": f"127.0.0.1:{ports[i]}", "seeds": [f"127.0.0.1:{ports[0]}"],
                                  "cookie": "metrics-secret", "heartbeat_ms": 200})
        n.config.write_text(n.config.read_text().replace("[node]\n", f"[node]\nid = \"{name}\"\n", 1))
        nodes.append(n.start())
    node = nodes[0]
    wait_for(lambda: len(owned(node)) + len(owned(nodes[1])) == 6 and len(node.get("/v1/cluster")[1]["members"]) == 2,
             60, "partitions assigned and the cluster formed")
    wait_for(lambda: node.overview()["events"] > 19000 and node.overview()["windows_closed"] > 0, 120, "events consumed")

    port, pdir = free_port(), tmp_path / "prometheus"
    out = subprocess.run([str(ROOT / "scripts/prometheus"), "start", "--port", str(port), "--data-dir", str(pdir),
                          "--scrape", f"127.0.0.1:{node.port}"], check=True, capture_output=True, text=True).stdout
    url = next(l.split("=", 1)[1] for l in out.splitlines() if l.startswith("url="))
    try:
        wait_for(lambda: prom_query(url, 'up{job="wtm"} == 1'), 60, "the first scrape")
        wanted = dashboard_metrics()
        assert len(wanted) >= 15, wanted
        missing = [m for m in sorted(wanted) if not prom_query(url, f'count({{__name__="{m}"}})')]
        assert not missing, f"dashboard panels query metrics Prometheus does not have: {missing}"
        # A query from each dashboard returns data, not just a series name that parses.
        for name in ["wtm_actor_mailbox_depth", "wtm_window_requests_total", "wtm_kafka_rebalances_total"]:
            assert prom_query(url, name), name
    finally:
        subprocess.run([str(ROOT / "scripts/prometheus"), "stop", "--data-dir", str(pdir)], check=True)

    status, body = node.get("/metrics")
    assert status == 200
    lint = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True)
    assert lint.returncode == 0, (lint.stdout + lint.stderr).decode()
