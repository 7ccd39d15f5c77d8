"""Cluster membership between real `wtm run` processes (`[cluster]`): nodes find each other from
one seed, a node with the wrong cookie is refused and never listed, a frozen (SIGSTOP) or killed
node is declared down within the stated bound (cluster.failure_after_ms + one heartbeat) while
the others keep answering at once, and it is alive again when it comes back."""

import signal
import time

from conftest import START, free_port

SOURCE = dict(seed=3, hosts=5, rate=50.0, realtime=False, start=START, duration_s=600, anomalies=0)
HEARTBEAT_MS, FAILURE_AFTER_MS = 200, 1500
BOUND_S = (FAILURE_AFTER_MS + HEARTBEAT_MS) / 1000


def cluster_node(node_factory, name, port, seed_port, cookie="shared-secret"):
    n = node_factory(SOURCE, name=name, cluster={
        "listen": f"127.0.0.1:{port}", "seeds": [f"127.0.0.1:{seed_port}"], "cookie": cookie,
        "heartbeat_ms": HEARTBEAT_MS, "failure_after_ms": FAILURE_AFTER_MS})
    n.config.write_text(n.config.read_text().replace("[node]\n", f"[node]\nid = \"{name}\"\n", 1))
    return n


def members(node):
    started = time.time()
    status, body = node.get("/v1/cluster")
    took = time.time() - started
    assert status == 200, body
    return {m["id"]: m for m in body["members"]}, took


def wait_for(node, predicate, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        seen, _ = members(node)
        if predicate(seen):
            return time.time()
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {members(node)[0]}")


def metric(node, name):
    _, text = node.get("/metrics")
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.decode().splitlines() if l.startswith(name))


def test_members_find_each_other_refuse_a_wrong_cookie_and_detect_failures(node_factory):
    ports = [free_port() for _ in range(4)]
    a = cluster_node(node_factory, "a", ports[0], ports[0])
    b = cluster_node(node_factory, "b", ports[1], ports[0])
    c = cluster_node(node_factory, "c", ports[2], ports[1])  # knows only b: finds a through b
    intruder = cluster_node(node_factory, "intruder", ports[3], ports[0], cookie="not-the-secret")
    for n in (a, b, c, intruder):
        n.start()

    everyone = {"a", "b", "c"}
    for n in (a, b, c):
        wait_for(n, lambda m: set(m) == everyone and all(x["alive"] for x in m.values()), 30)
    seen, _ = members(a)
    assert seen["a"]["this_node"] and not seen["b"]["this_node"]
    assert seen["b"]["api"] == f"127.0.0.1:{b.port}" and seen["b"]["cluster"] == f"127.0.0.1:{ports[1]}"
    # The wrong cookie is refused, counted, and never listed, on either side.
    assert "intruder" not in seen and set(members(intruder)[0]) == {"intruder"}
    assert metric(a, "wtm_cluster_refused_peers_total") >= 1

    # Frozen past the bound: declared down; the others answer at once meanwhile.
    b.proc.send_signal(signal.SIGSTOP)
    frozen = time.time()
    down_at = wait_for(a, lambda m: not m["b"]["alive"], 10 * BOUND_S)
    assert down_at - frozen <= BOUND_S + 1.0, f"down after {down_at - frozen:.1f} s, bound {BOUND_S} s"
    assert members(a)[1] < 1.0 and members(c)[1] < 1.0
    assert not members(c)[0]["b"]["alive"] and members(a)[0]["b"]["partitions"] == []
    b.proc.send_signal(signal.SIGCONT)
    wait_for(a, lambda m: m["b"]["alive"], 10)
    assert metric(a, "wtm_cluster_peer_failures_total") >= 1

    # Killed and started again (same address): redialled and alive again.
    c.kill()
    wait_for(a, lambda m: not m["c"]["alive"], 10 * BOUND_S)
    c.start()
    for n in (a, b, c):
        wait_for(n, lambda m: set(m) == everyone and all(x["alive"] for x in m.values()), 60)
