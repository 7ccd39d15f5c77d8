"""One node's throughput on the built-in generator.

Cases:
- unpaced: the generator as fast as it goes, every aggregate, checkpoints, the lake (with and
  without the raw-events archive); events/s = events / (wall time from ready to finished);
- default: the embedded default (paced, 500 events/s) for a minute; reports the CPU it takes.

CPU time comes from /proc/<pid>/stat; peak RSS from /proc/<pid>/status (VmHWM).
"""

import json
import os
import pathlib
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

WTM = sys.argv[1]
OUT = pathlib.Path(__file__).with_name("RESULTS.md")
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
        return json.loads(r.read())


def cpu_seconds(pid):
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def peak_rss_mb(pid):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_node(wtm, env, data_dir):
    """`wtm run` on a free loopback port with `env` and its own data directory, once ready."""
    port = free_port()
    env = dict(env, WTM__NODE__LISTEN=f"127.0.0.1:{port}", WTM__NODE__DATA_DIR=data_dir)
    env.setdefault("RUST_LOG", "warn")
    p = subprocess.Popen([wtm, "run"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            get(port, "/readyz")
            return p, port
        except OSError:
            if p.poll() is not None:
                raise RuntimeError(f"the node exited ({p.returncode}) before it was ready")
            time.sleep(0.02)


def run_case(name, env_overrides, until_finished=True, seconds=60):
    with tempfile.TemporaryDirectory() as d:
        p, port = start_node(WTM, dict(os.environ, **env_overrides), d)
        try:
            t0, c0 = time.time(), cpu_seconds(p.pid)
            if until_finished:
                while not get(port, "/v1/overview")["finished"]:
                    time.sleep(0.05)
            else:
                time.sleep(seconds)
            wall, cpu = time.time() - t0, cpu_seconds(p.pid) - c0
            ov = get(port, "/v1/overview")
            rss = peak_rss_mb(p.pid)
        finally:
            p.terminate()
            p.wait()
    events = ov["events"] + ov["invalid_total"]
    row = dict(case=name, events=events, wall_s=wall, cpu_s=cpu, events_per_s=events / wall,
               events_per_cpu_s=events / cpu if cpu else 0.0, peak_rss_mb=rss)
    print(json.dumps(row), flush=True)
    return row


def machine():
    model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    return f"{os.cpu_count()} cores, {model}, {platform.system()} {platform.release()}, {rustc}"


def write_results(out, lines):
    """Write a run's table as the head of `out`, keeping the file's dated sections (from its first
    `## ` heading on): they are the record of earlier runs and what was read from them."""
    kept = ""
    if out.exists():
        old = out.read_text()
        at = old.find("\n## ")
        if at >= 0:
            kept = "\n" + old[at + 1:]
    out.write_text("\n".join(lines).rstrip("\n") + "\n" + kept)


def main():
    unpaced = dict(WTM__SOURCE__REALTIME="false", WTM__SOURCE__START="2026-01-01T00:00:00Z",
                   WTM__SOURCE__HOSTS="50", WTM__SOURCE__RATE="2000", WTM__SOURCE__DURATION_S="1800",
                   WTM__SOURCE__ANOMALIES="0")
    rows = [
        run_case("unpaced, raw-events archive on", unpaced),
        run_case("unpaced, raw-events archive off", dict(unpaced, WTM__LAKE__RAW_EVENTS="false")),
        run_case("embedded default (paced 500 events/s), 60 s", {}, until_finished=False, seconds=60),
    ]
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {machine()}. Run: `bench/run` on {time.strftime('%Y-%m-%d')}.",
        "",
        "One node, built-in generator (JSON records parsed like any source), 4 partitions, 2 window",
        "shards, every aggregate on, 1 s checkpoints to the local store (redb; sled before 10594cc), Parquet lake on local disk.",
        "",
        "| case | events | wall s | CPU s | events/s | events per CPU-second | peak RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['case']} | {r['events']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['events_per_s']:,.0f} | "
                     f"{r['events_per_cpu_s']:,.0f} | {r['peak_rss_mb']:.0f} |")
    write_results(OUT, lines)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
