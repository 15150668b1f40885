#!/usr/bin/env python3
"""intentd beside a three-node etcd, in one sitting, with one load generator.

Starts a three-member etcd (Debian's etcd-server) and a three-node intentd cluster on
loopback, one after the other, and drives both with the same wrk script (bench/create.lua:
closed loop, one durable write per request, ~200-byte value). Both acknowledge a write only
once a majority has it in an fsynced log. Prints one line per figure and the ratios the
performance goals are stated in (docs/performance.md):

  etcd3   c=N   req/s p50 p99          durable puts, through the leader
  leader  c=N   req/s p50 p99          intentd creates, through the leader
  spread  c=N   req/s p50 p99          the same load split over all three nodes
  roundtrip c=16 ...                   create, delivery on the agent stream, resume,
                                       COMPLETED seen (`intentd bench --workload roundtrip`)
  streams N=... ...                    creates on one node with N idle agent streams open
  memory  intents=N rss_mib=...        RSS and disk after N stored intents, restart time

Quantiles of several wrk processes are merged from the 200 quantiles each prints, weighted
by its request count. Absolute figures drift between machines and sittings: quote ratios.

Usage: bench/run.sh [--duration S] [--levels 1,16,64] [--streams 10000] [--intents N]
                    [--skip-etcd] [--only leader,spread,...]
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LUA = os.path.join(ROOT, "bench", "create.lua")
KEY = "bench-admin-key-0123456789abcdef"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what, check, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception:
            pass
        time.sleep(0.1)
    raise SystemExit(f"bench: timed out waiting for {what}")


def http_json(url, timeout=2.0):
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.load(resp)


class Procs:
    """Child processes that die with the script."""

    def __init__(self):
        self.procs = []

    def start(self, args, log, env=None):
        out = open(log, "wb")
        p = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env,
                             start_new_session=True)
        self.procs.append(p)
        return p

    def stop(self, procs=None, sig=signal.SIGTERM):
        for p in list(procs if procs is not None else self.procs):
            if p.poll() is None:
                p.send_signal(sig)
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p in self.procs:
                self.procs.remove(p)


# ------------------------------------------------------------------------------- wrk
def wrk(targets, connections, seconds, mode, secret, value_bytes, limit=None):
    """Runs one wrk per target at once, `connections` split between them; returns the merged
    figures."""
    per = [connections // len(targets) + (1 if i < connections % len(targets) else 0)
           for i in range(len(targets))]
    runs = []
    for target, c in zip(targets, per):
        if c == 0:
            continue
        threads = 2 if c >= 2 else 1
        args = ["wrk", f"-t{threads}", f"-c{c}", f"-d{seconds}s", "--timeout", "5s", "-s", LUA,
                f"http://{target}", "--", mode, secret, str(value_bytes)]
        runs.append(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True))
    stats = []
    for p in runs:
        out, _ = p.communicate(timeout=seconds + 60)
        line = next((l for l in out.splitlines() if l.startswith("WRKSTAT")), None)
        if line is None:
            raise SystemExit(f"bench: wrk failed:\n{out}")
        kv = dict(x.split("=", 1) for x in line.split()[1:])
        stats.append({
            "requests": int(kv["requests"]),
            "seconds": int(kv["duration_us"]) / 1e6,
            "errors": int(kv["non2xx"]) + int(kv["sockerr"]),
            "quantiles": [int(x) for x in kv["quantiles"].split(",")],
        })
    return merge(stats)


def merge(stats):
    """Sums throughput and merges latency distributions: each run's 199 half-percent quantiles
    stand for its requests in equal shares."""
    samples = []
    for s in stats:
        weight = s["requests"] / 199 if s["requests"] else 0
        samples += [(q, weight) for q in s["quantiles"][:199]]
    samples.sort()
    total = sum(w for _, w in samples)

    def pct(p):
        acc = 0.0
        for q, w in samples:
            acc += w
            if acc >= total * p / 100:
                return q / 1000
        return samples[-1][0] / 1000 if samples else 0.0

    return {
        "rps": sum(s["requests"] / s["seconds"] for s in stats),
        "p50": pct(50),
        "p99": pct(99),
        "errors": sum(s["errors"] for s in stats),
        "requests": sum(s["requests"] for s in stats),
    }


def line(label, c, r):
    print(f"{label:<8} c={c:<3} req/s={r['rps']:7.0f} p50_ms={r['p50']:7.2f} "
          f"p99_ms={r['p99']:7.2f} errors={r['errors']} requests={r['requests']}", flush=True)


# ------------------------------------------------------------------------------ etcd
def etcd_cluster(procs, tmp):
    names = [f"m{i}" for i in range(1, 4)]
    client = {n: free_port() for n in names}
    peer = {n: free_port() for n in names}
    initial = ",".join(f"{n}=http://127.0.0.1:{peer[n]}" for n in names)
    members = []
    for n in names:
        members.append(procs.start([
            "etcd", "--name", n, "--data-dir", f"{tmp}/etcd-{n}",
            "--listen-client-urls", f"http://127.0.0.1:{client[n]}",
            "--advertise-client-urls", f"http://127.0.0.1:{client[n]}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer[n]}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer[n]}",
            "--initial-cluster", initial, "--initial-cluster-state", "new",
            "--initial-cluster-token", f"bench-{os.getpid()}",
        ], f"{tmp}/etcd-{n}.log"))
    endpoints = [f"127.0.0.1:{client[n]}" for n in names]

    def leader():
        for ep in endpoints:
            req = urllib.request.Request(f"http://{ep}/v3/maintenance/status", data=b"{}",
                                         method="POST")
            with urllib.request.urlopen(req, timeout=1) as resp:
                st = json.load(resp)
            if st.get("leader") and st["leader"] == st["header"]["member_id"]:
                return ep
        return None

    return members, endpoints, wait_until("an etcd leader", leader)


# --------------------------------------------------------------------------- intentd
class Intentd:
    def __init__(self, procs, tmp, binary, nodes=3):
        self.procs, self.tmp, self.binary = procs, tmp, binary
        self.ids = list(range(1, nodes + 1))
        self.http = {i: free_port() for i in self.ids}
        self.grpc = {i: free_port() for i in self.ids}
        self.raft = {i: free_port() for i in self.ids}
        self.peers = ",".join(f"{i}=127.0.0.1:{self.raft[i]}" for i in self.ids)
        self.node = {}
        for i in self.ids:
            self.start(i)

    def start(self, i):
        self.node[i] = self.procs.start([
            self.binary, "serve", "--node-id", str(i), "--data-dir", f"{self.tmp}/n{i}",
            "--http-addr", f"127.0.0.1:{self.http[i]}", "--grpc-addr",
            f"127.0.0.1:{self.grpc[i]}", "--raft-addr", f"127.0.0.1:{self.raft[i]}",
            "--peers", self.peers, "--admin-key", KEY,
        ], f"{self.tmp}/n{i}.log", env={**os.environ, "INTENTD_LOG": "warn"})

    def addr(self, i):
        return f"127.0.0.1:{self.http[i]}"

    def leader(self):
        def ask():
            for i in self.ids:
                h = http_json(f"http://{self.addr(i)}/health", timeout=1)
                if h.get("leader_id") and h["leader_id"] in self.ids:
                    return h["leader_id"]
            return None
        return wait_until("an intentd leader", ask)

    def healthy(self, i):
        return http_json(f"http://{self.addr(i)}/health", timeout=1).get("leader_id")

    def rss_mib(self, i):
        with open(f"/proc/{self.node[i].pid}/status") as f:
            kb = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
        return kb / 1024

    def disk_mib(self, i):
        total = 0
        for dirpath, _, files in os.walk(f"{self.tmp}/n{i}"):
            for name in files:
                try:
                    total += os.path.getsize(os.path.join(dirpath, name))
                except OSError:
                    pass
        return total / (1 << 20)


def intentd_bench(binary, servers, *extra):
    args = [binary, "bench", "--server", ",".join(f"http://{s}" for s in servers),
            "--api-key", KEY, *extra]
    out = subprocess.run(args, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise SystemExit(f"bench: {' '.join(args)} failed:\n{out.stdout}{out.stderr}")
    return out.stdout.strip().splitlines()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=10, help="seconds per level")
    ap.add_argument("--levels", default="1,16,64")
    ap.add_argument("--value-bytes", type=int, default=200)
    ap.add_argument("--streams", type=int, default=10000, help="idle agent streams (0: skip)")
    ap.add_argument("--intents", type=int, default=0,
                    help="store this many intents and report memory and restart (0: skip)")
    ap.add_argument("--skip-etcd", action="store_true")
    ap.add_argument("--only", default="leader,spread,roundtrip,streams,memory")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/intentd"))
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    only = set(args.only.split(","))
    tmp = tempfile.mkdtemp(prefix="intentd-bench.")
    procs = Procs()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    results = {}
    try:
        print(f"# {time.strftime('%Y-%m-%d %H:%M')} {os.cpu_count()} cores, "
              f"{args.duration} s per level, {args.value_bytes}-byte values, tmp={tmp}", flush=True)
        if not args.skip_etcd:
            members, endpoints, leader = etcd_cluster(procs, tmp)
            wrk([leader], 16, 2, "etcd", "warm", args.value_bytes)
            for c in levels:
                r = wrk([leader], c, args.duration, "etcd", f"bench/c{c}", args.value_bytes)
                results[("etcd3", c)] = r
                line("etcd3", c, r)
            procs.stop(members)

        cluster = Intentd(procs, tmp, args.binary)
        lead = cluster.leader()
        wait_until("all nodes to know the leader",
                   lambda: all(cluster.healthy(i) for i in cluster.ids))
        everyone = [cluster.addr(i) for i in cluster.ids]
        wrk(everyone, 12, 2, "intentd", KEY, args.value_bytes)
        for c in levels:
            if "leader" in only:
                r = wrk([cluster.addr(lead)], c, args.duration, "intentd", KEY, args.value_bytes)
                results[("leader", c)] = r
                line("leader", c, r)
            if "spread" in only:
                # c=1 cannot be split: it goes through a follower, the worse of the two paths.
                targets = everyone if c >= 3 else [cluster.addr(next(
                    i for i in cluster.ids if i != lead))]
                r = wrk(targets, c, args.duration, "intentd", KEY, args.value_bytes)
                results[("spread", c)] = r
                line("spread", c, r)
        if "roundtrip" in only:
            for out in intentd_bench(args.binary, everyone, "--workload", "roundtrip",
                                     "--concurrency", "16", "--seconds", str(args.duration)):
                print(out, flush=True)
        if "streams" in only and args.streams:
            # The same creates on the leader without and then with the idle streams open.
            for streams in (0, args.streams):
                extra = ["--idle-streams", str(streams)] if streams else []
                for out in intentd_bench(args.binary, [cluster.addr(lead)], "--concurrency",
                                         "16", "--seconds", str(args.duration), *extra):
                    print(f"streams={streams} {out}", flush=True)
        if "memory" in only and args.intents:
            memory(cluster, args)

        print("# ratios (intentd / etcd3 throughput; latency ratios are intentd / etcd3)")
        for c in levels:
            e = results.get(("etcd3", c))
            for label in ("leader", "spread"):
                r = results.get((label, c))
                if e and r:
                    print(f"ratio   {label:<6} c={c:<3} throughput={r['rps'] / e['rps']:.2f}x "
                          f"p50={r['p50'] / e['p50']:.2f}x p99={r['p99'] / e['p99']:.2f}x")
        for c in levels:
            le, sp = results.get(("leader", c)), results.get(("spread", c))
            if le and sp:
                print(f"ratio   spread/leader c={c:<3} throughput={sp['rps'] / le['rps']:.2f}x "
                      f"p99={sp['p99'] / le['p99']:.2f}x")
    finally:
        procs.stop()
        if os.environ.get("KEEP_BENCH_DIR") != "1":
            shutil.rmtree(tmp, ignore_errors=True)


def memory(cluster, args):
    """Stores `args.intents` intents, then reports each node's RSS and disk and how long a
    restarted follower takes to serve again."""
    lead = cluster.leader()
    everyone = [cluster.addr(i) for i in cluster.ids]
    stored, started = 0, time.monotonic()
    while stored < args.intents:
        r = wrk(everyone, 64, 20, "intentd", KEY, args.value_bytes)
        stored += r["requests"] - r["errors"]
    took = time.monotonic() - started
    for i in cluster.ids:
        role = "leader" if i == lead else "follower"
        print(f"memory  node={i} role={role} intents={stored} rss_mib={cluster.rss_mib(i):.0f} "
              f"disk_mib={cluster.disk_mib(i):.0f} load_s={took:.0f}", flush=True)
    follower = next(i for i in cluster.ids if i != lead)
    cluster.procs.stop([cluster.node[follower]])
    t0 = time.monotonic()
    cluster.start(follower)
    wait_until("the restarted node", lambda: cluster.healthy(follower), timeout=300)
    print(f"restart node={follower} intents={stored} serving_after_s={time.monotonic() - t0:.1f} "
          f"rss_mib={cluster.rss_mib(follower):.0f}", flush=True)


if __name__ == "__main__":
    main()
