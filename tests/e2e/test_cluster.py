"""Cluster membership between real `wtm run` processes (`[cluster]`): nodes find each other from
one seed, a node with the wrong cookie is refused and never listed, a frozen (SIGSTOP) or killed
node is declared down within the stated bound (cluster.failure_after_ms + one heartbeat) while
the others keep answering at once, and it is alive again when it comes back."""

import signal
import subprocess
import time

from conftest import START, Truth, free_port, generate, parse_ts

HEARTBEAT_MS, FAILURE_AFTER_MS = 200, 3000
BOUND_S = (FAILURE_AFTER_MS + HEARTBEAT_MS) / 1000


def idle_source(broker, prefix):
    """A Kafka source on an empty topic, a consumer group per node: for tests of membership
    alone (a cluster forms over a Kafka topic only)."""
    from test_kafka import kafka_source, new_topic
    topic = new_topic(broker, prefix)
    return lambda node: kafka_source(broker, topic, group=f"g-{topic}-{node}")


def cluster_node(node_factory, source, name, port, seed_port, cookie="shared-secret"):
    n = node_factory(source(name), name=name, cluster={
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


def test_members_find_each_other_refuse_a_wrong_cookie_and_detect_failures(broker, node_factory):
    ports = [free_port() for _ in range(4)]
    src = idle_source(broker, "members")
    a = cluster_node(node_factory, src, "a", ports[0], ports[0])
    b = cluster_node(node_factory, src, "b", ports[1], ports[0])
    c = cluster_node(node_factory, src, "c", ports[2], ports[1])  # knows only b: finds a through b
    intruder = cluster_node(node_factory, src, "intruder", ports[3], ports[0], cookie="not-the-secret")
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
    # c judges on its own clock: within the same bound of the freeze.
    c_down_at = wait_for(c, lambda m: not m["b"]["alive"], 10 * BOUND_S)
    assert c_down_at - frozen <= BOUND_S + 1.0, f"c: down after {c_down_at - frozen:.1f} s"
    assert members(a)[0]["b"]["partitions"] == []
    b.proc.send_signal(signal.SIGCONT)
    wait_for(a, lambda m: m["b"]["alive"], 10)
    assert metric(a, "wtm_cluster_peer_failures_total") >= 1

    # Killed and started again (same address): redialled and alive again.
    c.kill()
    wait_for(a, lambda m: not m["c"]["alive"], 10 * BOUND_S)
    c.start()
    for n in (a, b, c):
        wait_for(n, lambda m: set(m) == everyone and all(x["alive"] for x in m.values()), 60)


def test_members_find_each_other_through_their_kafka_group(broker, node_factory):
    """With `cluster.discover_from_kafka` and no seeds, the members of one consumer group find
    each other from the `client.id`s the group lists; a node of another group is not found."""
    from test_kafka import kafka_source, new_topic
    topic = new_topic(broker, "discover")
    ports = [free_port() for _ in range(4)]

    def node(name, port, group):
        n = node_factory(kafka_source(broker, topic, group=group), name=name, cluster={
            "listen": f"127.0.0.1:{port}", "cookie": "shared-secret", "discover_from_kafka": True,
            "heartbeat_ms": HEARTBEAT_MS, "failure_after_ms": FAILURE_AFTER_MS})
        n.config.write_text(n.config.read_text().replace("[node]\n", f"[node]\nid = \"{name}\"\n", 1))
        return n

    group = f"g-{topic}"
    a, b, c = (node(n, p, group) for n, p in zip("abc", ports))
    loner = node("loner", ports[3], f"{group}-other")
    for n in (a, b, c, loner):
        n.start()
    everyone = {"a", "b", "c"}
    started = time.time()
    for n in (a, b, c):
        wait_for(n, lambda m: set(m) == everyone and all(x["alive"] for x in m.values()), 60)
    print(f"three nodes found each other through their group in {time.time() - started:.1f} s")
    assert set(members(loner)[0]) == {"loner"}
    assert "loner" not in members(a)[0]


def test_any_node_answers_the_overview_for_the_whole_cluster(broker, node_factory, tmp_path, browser):
    """Three Kafka nodes in one group and one cluster: each owns some partitions, and every
    node's /v1/overview adds up the whole topic exactly; every node answers each site's series,
    top-K and the anomalies for the whole cluster. While a member is frozen, an answer is
    either complete and exact or says it is partial and who is missing — never a smaller total
    presented as complete — and it comes within the fan-out timeout."""
    from test_kafka import FAST, PARTITIONS, PacedProducer, kafka_source, new_topic, owned, wait_exact

    path = generate(tmp_path / "events.json", seed=13, hosts=16, rate=200.0, start=START, duration=600, anomalies=0,
                    malformed_share=0.001)
    truth = Truth(path)
    topic = new_topic(broker, "cluster")
    lake = tmp_path / "shared-lake"
    ports = [free_port() for _ in range(3)]
    nodes = []
    for i, name in enumerate("abc"):
        n = node_factory(kafka_source(broker, topic), name=name, **dict(FAST, lake=dict(FAST["lake"], path=str(lake))),
                         cluster={"listen": f"127.0.0.1:{ports[i]}", "seeds": [f"127.0.0.1:{ports[0]}"],
                                  "cookie": "shared-secret", "heartbeat_ms": HEARTBEAT_MS,
                                  "failure_after_ms": FAILURE_AFTER_MS,
                                  # Tiny pages: every member answers /v1/hosts in several.
                                  "page_shares": 20})
        n.config.write_text(n.config.read_text().replace("[node]\n", f"[node]\nid = \"{name}\"\n", 1))
        nodes.append(n.start())
    a, b, c = nodes
    # Produce once the cluster and the group have settled: every node sees three live members,
    # each owning some of the partitions.
    for n in nodes:
        wait_for(n, lambda m: len(m) == 3 and all(x["alive"] and x["partitions"] for x in m.values())
                 and sorted(p for x in m.values() for p in x["partitions"]) == list(range(PARTITIONS)), 60)
    # Unkeyed: every host's records spread over partitions owned by different nodes, so each
    # host's home merges shares from the whole cluster.
    producer = PacedProducer(broker, topic, path, seconds=3, keyed=False)
    producer.start()
    producer.finish()
    lake_windows_now, _ = wait_exact(lake, truth)

    def overview(node):
        started = time.time()
        status, body = node.get("/v1/overview")
        assert status == 200, body
        return body, time.time() - started

    def settled():
        bodies = [overview(n)[0] for n in nodes]
        return all(not o["partial"] and o["events"] == truth.events for o in bodies) and bodies

    deadline = time.time() + 60
    while not (bodies := settled()) and time.time() < deadline:
        time.sleep(0.3)
    assert bodies, [overview(n)[0] for n in nodes]
    assert all(len(owned(n)) > 0 for n in nodes), "every node owns partitions"
    for o in bodies:
        assert o["invalid_total"] == truth.malformed and o["hosts"] == len({h for h, _ in truth.windows})
        assert sorted(p["partition"] for p in o["partitions"]) == list(range(PARTITIONS))
        assert (o["events"], o["invalid"], o["late"]) == (bodies[0]["events"], bodies[0]["invalid"], bodies[0]["late"])

    # Every node answers each site's series for the whole cluster: the same windows, each equal
    # to the lake's (every partition's share once), and the same top status codes.
    from test_pipeline import lake_windows

    lake_w = lake_windows(lake)
    rng = "from=2025-12-31T23:00:00Z&to=2026-01-01T02:00:00Z"
    for host in sorted({h for h, _ in truth.windows}):
        series = []
        for n in nodes:
            status, body = n.get(f"/v1/hosts/{host}/windows?{rng}")
            assert status == 200 and not body["partial"], body
            series.append([(w["start"], w["requests"], w["final"]) for w in body["windows"]])
        assert series[0] == series[1] == series[2], host
        expected = sorted((k[1], v["requests"]) for k, v in lake_w.items() if k[0] == host)
        got = [(int(parse_ts(s)), r) for s, r, final in series[0]]
        assert got == expected and all(f for _, _, f in series[0]), (host, got, expected)
        tops = [n.get(f"/v1/hosts/{host}/top?dimension=status&k=5&{rng}")[1] for n in nodes]
        assert tops[0]["entries"] == tops[1]["entries"] == tops[2]["entries"] and not tops[0]["partial"]
    anomalies = [n.get("/v1/anomalies")[1] for n in nodes]
    assert anomalies[0]["anomalies"] == anomalies[1]["anomalies"] == anomalies[2]["anomalies"]

    # Every node lists every site with its exact totals over all its windows (as the lake holds
    # them: late events are not in a window), gathered from the others page by page.
    expected_hosts = {}
    for (host, _), w in lake_w.items():
        e = expected_hosts.setdefault(host, [0, 0, 0])
        e[0] += 1
        e[1] += w["requests"]
        e[2] += w["bytes"]
    for n in nodes:
        status, body = n.get("/v1/hosts?windows=10000")
        assert status == 200 and not body["partial"], body
        got = {h["host"]: [h["windows"], h["requests"], h["bytes"]] for h in body["hosts"]}
        want = expected_hosts
        assert got == want, [(h, got.get(h), want.get(h)) for h in sorted(set(got) | set(want)) if got.get(h) != want.get(h)][:5]
    # The dashboard of any member shows the whole cluster (it reads the same API).
    from conftest import Page

    page = Page(browser, f"http://127.0.0.1:{b.port}")
    page.open()
    page.loaded_since(0)
    assert int(page.page.get_attribute("#card-events [data-value]", "data-value")) == truth.events
    assert int(page.page.get_attribute("#card-sites [data-value]", "data-value")) == len(expected_hosts)
    assert int(page.page.get_attribute("#sites-info", "data-total")) == len(expected_hosts)
    page.open("#/cluster")
    page.page.wait_for_selector("#members tbody tr:nth-child(3)")
    assert page.page.locator("#members .pill.up").count() == 3
    page.close()
    _, text = a.get("/metrics")
    calls = sum(float(l.rsplit(" ", 1)[1]) for l in text.decode().splitlines()
                if l.startswith("wtm_cluster_call_seconds_count") and 'query="hosts"' in l)
    assert calls > 2 * 2, f"a's two peers answered /v1/hosts in pages ({calls} calls)"

    # One detector per host in the whole cluster: each (host, window) is judged exactly once,
    # whole (every partition's share, from whichever node wrote it), and the homes split the
    # sites between the members.
    assert_judged_once(nodes, len(lake_windows_now))
    assert sum(metric(n, "wtm_detector_incomplete_windows_total") for n in nodes) == 0
    assert all(metric(n, "wtm_cluster_shares_sent_total") > 0 for n in nodes), "shares crossed nodes"
    wait_for(a, lambda m: sum(x["home_hosts"] for x in m.values()) == len(expected_hosts)
             and all(x["home_hosts"] > 0 for x in m.values()), 10)
    assert anomalies[0]["anomalies"] == [], anomalies[0]["anomalies"][:3]

    # c freezes: its partitions stay c's until the group's session timeout moves them.
    c.proc.send_signal(signal.SIGSTOP)
    ride_out(a, "c", truth)
    c.proc.send_signal(signal.SIGCONT)
    # One fault at a time: c rejoins the group and takes partitions again (restoring them from
    # the shared snapshots) before b dies. A member still restoring may not answer within the
    # fan-out timeout, and is then rightly named missing too.
    for n in nodes:
        wait_for(n, lambda m: len(m) == 3 and all(x["alive"] and x["partitions"] for x in m.values())
                 and sorted(p for x in m.values() for p in x["partitions"]) == list(range(PARTITIONS)), 60)
    deadline = time.time() + 30
    while not ((o := a.get("/v1/overview")[1]) and not o["partial"] and o["events"] == truth.events):
        assert time.time() < deadline, f"the overview never whole again after c came back: {o}"
        time.sleep(0.2)
    # b crashes (SIGKILL): the same, and it does not come back.
    b.proc.kill()
    b.proc.wait()
    ride_out(a, "b", truth)
    # c's failure detector may call b dead a heartbeat after a's did: until then c rightly
    # names b missing. Once it has, both answer the same, whole.
    deadline = time.time() + 10
    while (hosts_c := c.get("/v1/hosts?windows=10000")[1])["partial"]:
        assert hosts_c["missing"] == ["b"] and time.time() < deadline, hosts_c["missing"]
        time.sleep(0.2)
    assert a.get("/v1/hosts?windows=10000")[1] == hosts_c


def assert_judged_once(nodes, windows, timeout=90):
    """The detectors of all `nodes` together judge every one of `windows` (host, window) points
    exactly once."""
    def judged():
        return sum(metric(n, "wtm_detector_windows_total") for n in nodes)

    deadline = time.time() + timeout
    while judged() < windows and time.time() < deadline:
        time.sleep(0.3)
    time.sleep(2)  # nothing more may come
    assert judged() == windows, f"{judged()} points judged for {windows} windows"


def ride_out(node, victim, truth):
    """While `victim` is frozen or dead, every overview `node` gives is either complete and exact
    or partial naming the victim, and comes within the fan-out timeout; once the group has moved
    the victim's partitions it is complete and exact again."""
    def overview():
        started = time.time()
        status, body = node.get("/v1/overview")
        assert status == 200, body
        return body, time.time() - started

    seen_partial = False
    until = time.time() + 30
    while time.time() < until:
        o, took = overview()
        assert took < 4, f"an overview took {took:.1f} s"
        if o["partial"]:
            seen_partial = True
            assert o["missing"] == [victim], o["missing"]
        else:
            assert o["events"] == truth.events, "a smaller total presented as complete"
            if seen_partial:
                break  # the victim's partitions have moved: complete again
        time.sleep(0.2)
    assert seen_partial, f"{victim} never showed as missing"
    assert not o["partial"] and o["events"] == truth.events, o


def test_a_fourth_node_joins_under_load(broker, node_factory, tmp_path):
    """A fourth node joins a three-node cluster while records flow: the group gives it
    partitions, host homes move to it, and the end state is exact on every node — each
    (host, window) judged exactly once in the whole cluster."""
    from test_kafka import FAST, PARTITIONS, PacedProducer, kafka_source, new_topic, owned, wait_exact
    from test_pipeline import lake_windows

    path = generate(tmp_path / "events.json", seed=17, hosts=12, rate=150.0, start=START, duration=2400,
                    anomalies=6, partitions=PARTITIONS)
    truth = Truth(path)
    topic = new_topic(broker, "join")
    lake = tmp_path / "shared-lake"
    # d's port is picked only when it starts: a port picked early can be taken meanwhile by an
    # outgoing connection's ephemeral port.
    ports = [free_port() for _ in range(3)]

    def node(i, name):
        if i == len(ports):
            ports.append(free_port())
        n = node_factory(kafka_source(broker, topic), name=name, **dict(FAST, lake=dict(FAST["lake"], path=str(lake))),
                         cluster={"listen": f"127.0.0.1:{ports[i]}", "seeds": [f"127.0.0.1:{ports[0]}"],
                                  "cookie": "shared-secret", "heartbeat_ms": HEARTBEAT_MS,
                                  "failure_after_ms": FAILURE_AFTER_MS})
        n.config.write_text(n.config.read_text().replace("[node]\n", f"[node]\nid = \"{name}\"\n", 1))
        return n

    nodes = [node(i, name).start() for i, name in enumerate("abc")]
    for n in nodes:
        wait_for(n, lambda m: len(m) == 3 and all(x["alive"] and x["partitions"] for x in m.values()), 60)
    producer = PacedProducer(broker, topic, path, seconds=16, keyed=False)
    producer.start()
    time.sleep(5)
    d = node(3, "d").start()
    nodes.append(d)
    wait_for(d, lambda m: len(m) == 4 and all(x["alive"] for x in m.values()) and m["d"]["partitions"], 60)
    producer.finish()
    assert not producer.failed
    wait_exact(lake, truth)
    lake_w = lake_windows(lake)
    assert_judged_once(nodes, len(lake_w))
    assert owned(d), "the joiner owns partitions"
    seen, _ = members(a := nodes[0])
    assert seen["d"]["home_hosts"] > 0 and sum(x["home_hosts"] for x in seen.values()) == 12, seen

    overviews = [n.get("/v1/overview")[1] for n in nodes]
    for o in overviews:
        assert not o["partial"] and o["events"] == truth.events and o["invalid_total"] == truth.malformed
    hosts = [n.get("/v1/hosts?windows=10000")[1] for n in nodes]
    assert all(h == hosts[0] for h in hosts) and not hosts[0]["partial"]
    assert sum(h["requests"] for h in hosts[0]["hosts"]) == sum(w["requests"] for w in lake_w.values())
    lists = [n.get("/v1/anomalies")[1]["anomalies"] for n in nodes]
    assert all(x == lists[0] for x in lists)
    raised = sum(metric(n, "wtm_anomalies_total") for n in nodes)
    assert raised == len(lists[0]), f"{raised} anomalies raised in the cluster, {len(lists[0])} distinct"
    assert sum(metric(n, "wtm_cluster_handover_timeouts_total") for n in nodes) == 0
    assert lists[0], "the injected anomalies are found"


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
            "-subj", f"/CN={name}", "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.pem"))
    return d / f"{name}.pem", d / f"{name}.key"


def make_cert(d, name, ca):
    """A node certificate for 127.0.0.1 signed by `ca`: (cert, key)."""
    ca_cert, ca_key = ca
    key, csr, cert = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.pem"
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={name}",
            "-keyout", str(key), "-out", str(csr))
    ext = d / f"{name}.ext"
    ext.write_text("subjectAltName = IP:127.0.0.1\nextendedKeyUsage = serverAuth, clientAuth\n")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key), "-CAcreateserial",
            "-days", "2", "-extfile", str(ext), "-out", str(cert))
    return cert, key


def test_mutual_tls_admits_only_peers_the_ca_signed(broker, node_factory, tmp_path):
    """With [cluster.tls], members talk over mutual TLS: two nodes whose certificates the CA
    signed form a cluster; a node with a certificate from another CA, and a plain-TCP node with
    the right cookie, never become members."""
    pki = tmp_path / "pki"
    pki.mkdir()
    ca, rogue_ca = make_ca(pki, "cluster-ca"), make_ca(pki, "rogue-ca")
    ports = [free_port() for _ in range(4)]
    src = idle_source(broker, "tls")

    def tls_node(name, port, cert_ca, trust):
        n = cluster_node(node_factory, src, name, port, ports[0])
        if cert_ca is not None:
            cert, key = make_cert(pki, name, cert_ca)
            n.config.write_text(n.config.read_text() + f'[cluster.tls]\ncert = "{cert}"\nkey = "{key}"\nca = "{trust}"\n')
        return n.start()

    a = tls_node("a", ports[0], ca, ca[0])
    b = tls_node("b", ports[1], ca, ca[0])
    rogue = tls_node("rogue", ports[2], rogue_ca, rogue_ca[0])
    plain = tls_node("plain", ports[3], None, None)
    for n in (a, b):
        wait_for(n, lambda m: set(m) == {"a", "b"} and all(x["alive"] for x in m.values()), 30)
    # Give the outsiders time to try (their dials back off from 1 s).
    deadline = time.time() + 6
    while time.time() < deadline:
        for n in (a, b):
            assert set(members(n)[0]) == {"a", "b"}, members(n)[0]
        time.sleep(0.5)
    assert set(members(rogue)[0]) == {"rogue"} and set(members(plain)[0]) == {"plain"}
    _, text = rogue.get("/metrics")
    tls_refused = [l for l in text.decode().splitlines()
                   if l.startswith("wtm_cluster_refused_peers_total") and 'reason="tls"' in l]
    assert tls_refused and float(tls_refused[0].rsplit(" ", 1)[1]) > 0, tls_refused
