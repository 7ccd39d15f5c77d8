"""Deployment artefacts against the binary: the Glue tables Terraform declares must have exactly the
columns (names, order, types) of the Parquet files the archiver writes, so Athena reads the lake."""

import os
import pathlib
import re
import subprocess
import json

import duckdb

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
