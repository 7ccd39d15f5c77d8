"""Deployment artefacts against the binary: the Glue tables Terraform declares must have exactly the
columns (names, order, types) of the Parquet files the archiver writes, so Athena reads the lake; the
docker-compose file and the Dockerfile only use commands, flags and settings the binary accepts."""

import json
import os
import pathlib
import re
import subprocess

import duckdb
import yaml

from conftest import ROOT, WTM, generate

# DuckDB's reading of the archiver's Arrow types, as Glue/Hive names them.
GLUE_TYPE = {"VARCHAR": "string", "TIMESTAMP WITH TIME ZONE": "timestamp", "INTEGER": "int", "BIGINT": "bigint",
             "DOUBLE": "double", "BLOB": "binary"}


def terraform_tables(tmp_path):
    """The `lake_tables` local of terraform/glue.tf, parsed by HashiCorp's HCL parser."""
    out = tmp_path / "tf.json"
    env = dict(os.environ, NODE_PATH=str(pathlib.Path.home() / ".cache/wtm-node/hcl-check/node_modules"))
    subprocess.run(["node", str(ROOT / "terraform/check/check-hcl.js"), str(ROOT / "terraform"), str(out)], check=True,
                   env=env, capture_output=True)
    parsed = json.loads(out.read_text())
    glue = next(v for k, v in parsed.items() if k.endswith("glue.tf") and "examples" not in k)
    local = {}
    for block in glue["locals"]:
        local.update(block)

    def columns(value):
        if isinstance(value, list):
            return [(c["name"], c["type"]) for c in value]
        m = re.fullmatch(r"\$\{local\.(\w+)\}", value)
        if m:
            return columns(local[m.group(1)])
        m = re.fullmatch(r"\$\{concat\(local\.(\w+),\s*\[(.*)\]\)\}", value, re.S)
        assert m, f"unexpected expression in lake_tables: {value}"
        extra = re.findall(r'name\s*=\s*"(\w+)",\s*type\s*=\s*"(\w+)"', m.group(2))
        return columns(local[m.group(1)]) + extra

    return {table: columns(v) for table, v in local["lake_tables"].items()}


def parquet_tables(lake):
    out = {}
    for table in ["windows", "late", "events", "invalid"]:
        rows = duckdb.connect().execute(
            f"describe select * from read_parquet('{lake}/{table}/*/*/*.parquet', hive_partitioning = false)").fetchall()
        out[table] = [(name, GLUE_TYPE[typ]) for name, typ, *_ in rows]
    return out


def test_glue_columns_match_the_parquet_the_archiver_writes(tmp_path):
    # Late and malformed lines are in there, so every table gets files.
    log = generate(tmp_path / "in.json", seed=5, hosts=5, rate=50.0, duration=1200, malformed_share=0.01,
                   partitions=1)
    data = tmp_path / "data"
    subprocess.run([WTM, "batch", "--quiet", "--raw-events", "--data-dir", str(data), str(log)], check=True,
                   capture_output=True)
    lake = data / "lake"
    assert (lake / "late").exists(), "the input should have late events"
    tf = terraform_tables(tmp_path)
    pq = parquet_tables(lake)
    assert sorted(tf) == sorted(pq)
    for table in pq:
        assert tf[table] == pq[table], table


# ---- docker-compose and Dockerfile (no Docker engine here: checked against the binary) ----------

COMPOSE = ROOT / "deploy/docker-compose.yml"
DOCKERFILE = ROOT / "deploy/Dockerfile"


def wtm_help(*args):
    return subprocess.run([WTM, *args, "--help"], capture_output=True, text=True, check=True).stdout


def pinned(image):
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("", "latest")


def test_compose_file_matches_what_the_binary_accepts(tmp_path):
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"kafka", "s3", "wtm-1", "wtm-2", "wtm-3", "producer", "prometheus", "grafana"} <= set(services)
    subcommands = wtm_help()
    wtm_services = [n for n, s in services.items() if s.get("image") == "wtm:local"]
    assert sorted(wtm_services) == ["producer", "wtm-1", "wtm-2", "wtm-3"]
    for name, svc in services.items():
        image = svc["image"]
        assert image == "wtm:local" or pinned(image), f"{name}: image {image} is not pinned to a version"
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("."):
                assert (COMPOSE.parent / src).exists(), f"{name}: mounts {src}, which is not in the repository"
            else:
                assert src in compose["volumes"], f"{name}: named volume {src} is not declared"
    for name in wtm_services:
        svc = services[name]
        cmd = svc["command"]
        assert cmd[0] in subcommands, f"{name}: `wtm {cmd[0]}` is not a command"
        flags = wtm_help(cmd[0])
        for arg in cmd[1:]:
            if arg.startswith("--"):
                assert arg in flags, f"{name}: `wtm {cmd[0]}` has no flag {arg}"
        health = svc.get("healthcheck", {}).get("test")
        if health:
            assert health[1:3] == ["/usr/local/bin/wtm", "probe"] and "probe" in subcommands, f"{name}: {health}"
        env = {k: str(v) for k, v in (svc.get("environment") or {}).items()}
        if cmd[0] == "run":
            # The node's whole configuration from this environment passes `wtm config`'s validation.
            clean = {k: v for k, v in os.environ.items() if not k.startswith("WTM__")}
            r = subprocess.run([WTM, "config"], env={**clean, **env}, capture_output=True, text=True)
            assert r.returncode == 0, f"{name}: {r.stderr}"
            assert 'kind = "kafka"' in r.stdout and 'url = "s3://wtm-lake/lake"' in r.stdout
            port = env["WTM__NODE__LISTEN"].rsplit(":", 1)[1]
            assert any(p.endswith(f":{port}") for p in svc["ports"]), f"{name}: the API port is not published"
            assert env["WTM__SOURCE__BROKERS"] == "kafka:9092" and env["WTM__LAKE__ENDPOINT"] == "http://s3:8333"
    # Prometheus scrapes every node on its API port; Grafana mounts what deploy/grafana holds.
    prom = yaml.safe_load((COMPOSE.parent / "prometheus.yml").read_text())
    targets = prom["scrape_configs"][0]["static_configs"][0]["targets"]
    assert sorted(targets) == [f"{n}:8080" for n in sorted(n for n in wtm_services if n.startswith("wtm-"))]
    dashboards = [v for v in services["grafana"]["volumes"] if "dashboards" in v][0].split(":")[1]
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/wtm.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == dashboards


def test_dockerfile_builds_and_runs_the_binary():
    lines = [l.strip() for l in DOCKERFILE.read_text().splitlines() if l.strip() and not l.strip().startswith("#")]
    stages = [l.split()[1] for l in lines if l.startswith("FROM ")]
    assert len(stages) == 2 and all(pinned(s) for s in stages), stages
    assert stages[0].startswith("rust:") and not stages[1].startswith("rust:"), "the runtime image carries no toolchain"
    text = "\n".join(lines)
    assert "cargo build --release --locked --bin wtm" in text
    assert "COPY --from=build /src/target/release/wtm /usr/local/bin/wtm" in text
    assert 'ENTRYPOINT ["/usr/local/bin/wtm"]' in text and 'CMD ["run"]' in text
    assert "USER 10001" in text, "runs unprivileged"
    assert 'CMD ["/usr/local/bin/wtm", "probe", "http://127.0.0.1:8080/healthz"]' in text and "probe" in wtm_help()
    expose = [l.split()[1] for l in lines if l.startswith("EXPOSE ")]
    env_line = next(l for l in lines if l.startswith("ENV "))
    assert expose == ["8080"] and "WTM__NODE__LISTEN=0.0.0.0:8080" in env_line
    # The runtime stage's environment is a valid configuration.
    env = dict(kv.split("=", 1) for kv in env_line.split()[1:])
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WTM__")}
    r = subprocess.run([WTM, "config"], env={**clean, **env}, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # The Rust toolchain the image builds with is at least the workspace's minimum.
    msrv = re.search(r'rust-version = "(\d+)\.(\d+)"', (ROOT / "Cargo.toml").read_text()).groups()
    img = re.match(r"rust:(\d+)\.(\d+)", stages[0]).groups()
    assert tuple(map(int, img)) >= tuple(map(int, msrv))


def test_probe_is_a_health_check(node_factory):
    node = node_factory(dict(seed=1, hosts=3, rate=50.0, realtime=True)).start()
    ok = subprocess.run([WTM, "probe", f"http://127.0.0.1:{node.port}/readyz"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    missing = subprocess.run([WTM, "probe", f"http://127.0.0.1:{node.port}/no/such/path"], capture_output=True, text=True)
    assert missing.returncode == 1 and "answered 404" in missing.stderr
    node.stop()
    down = subprocess.run([WTM, "probe", f"http://127.0.0.1:{node.port}/healthz", "--timeout", "2"], capture_output=True,
                          text=True)
    assert down.returncode == 1 and "cannot connect" in down.stderr
