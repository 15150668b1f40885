#!/usr/bin/env python3
"""CPU per create, by node and by thread group, for a load through the leader or spread.

Starts a three-node intentd on loopback (as bench/compare.py does), drives it with wrk
(bench/create.lua) for a warm-up and then a measured run, and divides each node's CPU time
(utime + stime of every thread, from /proc/PID/task/*/stat) by the creates completed, grouped
as the WAL writer thread, sled's threads (IO pool and log flusher) and the tokio workers (HTTP,
openraft, apply), and the bytes each group handed to write calls per create (files and
sockets: sled's write amplification shows here). Also prints how many commands one Raft entry
carried on average. CPU per write is steadier than throughput on a shared machine, so it is
what to compare between two binaries (run them alternately).

Usage: python3 bench/cpu_per_write.py [--binary PATH] [--mode leader|spread] [--connections 32]
                                      [--seconds 8] [--perf-dir DIR]
"""

import argparse
import collections
import os
import shutil
import subprocess
import tempfile

import compare


def group_of(comm):
    if comm.startswith("sled") or comm == "log flusher":
        return "sled"
    if "tokio" in comm:
        return "tokio"
    return comm


def thread_groups(pid):
    """CPU seconds (utime + stime) and bytes handed to write-like system calls (`wchar`:
    files and sockets alike, before the page cache) of one process, each summed per thread
    group."""
    cpu, wrote = collections.Counter(), collections.Counter()
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                group = group_of(f.read().strip())
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/task/{tid}/io") as f:
                io = dict(line.split(": ") for line in f.read().splitlines())
        except OSError:
            continue  # the thread ended meanwhile
        cpu[group] += (int(fields[11]) + int(fields[12])) / tick
        wrote[group] += int(io["wchar"])
    return cpu, wrote


def start_profiles(args, cluster, leader):
    """perf on the leader and one follower for the measured run (release builds carry
    debuginfo); `perf report -i FILE --children --sort sym -g none` reads them."""
    if not args.perf_dir:
        return []
    os.makedirs(args.perf_dir, exist_ok=True)
    follower = next(i for i in cluster.ids if i != leader)
    return [subprocess.Popen(
        ["perf", "record", "-q", "-e", "cpu-clock", "-F", "499", "--call-graph", "dwarf,16384",
         "-o", os.path.join(args.perf_dir, f"{role}.data"), "-p", str(cluster.node[i].pid),
         "--", "sleep", str(args.seconds)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for role, i in (("leader", leader), ("follower", follower))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default=os.path.join(compare.ROOT, "target/release/intentd"))
    ap.add_argument("--mode", choices=["leader", "spread"], default="leader")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--value-bytes", type=int, default=200)
    ap.add_argument("--perf-dir", help="also record a call-graph profile of the leader and of "
                    "one follower during the measured run (perf record -e cpu-clock) here")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="intentd-cpu-")
    procs = compare.Procs()
    try:
        cluster = compare.Intentd(procs, tmp, args.binary)
        leader = cluster.leader()
        for i in cluster.ids:
            compare.wait_until(f"node {i} to see a leader", lambda i=i: cluster.healthy(i))
        if args.mode == "leader":
            targets = [cluster.addr(leader)]
        else:
            targets = [cluster.addr(i) for i in cluster.ids]
        run = lambda seconds: compare.wrk(targets, args.connections, seconds, "intentd",
                                          compare.KEY, args.value_bytes)
        run(3)  # warm-up: connections, caches, the first snapshot's timing
        health = lambda: compare.http_json(f"http://{cluster.addr(leader)}/health")
        index_before = health()["last_log_index"]
        before = {i: thread_groups(cluster.node[i].pid) for i in cluster.ids}
        profilers = start_profiles(args, cluster, leader)
        result = run(args.seconds)
        for p in profilers:
            p.wait()
        after = {i: thread_groups(cluster.node[i].pid) for i in cluster.ids}
        entries = max(1, health()["last_log_index"] - index_before)
        n = max(1, result["requests"])
        print(f"{args.mode} c={args.connections} req/s={result['rps']:.0f} "
              f"p50_ms={result['p50']:.2f} p99_ms={result['p99']:.2f} "
              f"commands_per_entry={result['requests'] / entries:.1f}")
        total = 0.0
        for i in cluster.ids:
            (cpu0, wrote0), (cpu1, wrote1) = before[i], after[i]
            per = {g: (cpu1[g] - cpu0.get(g, 0.0)) / n * 1e6 for g in cpu1}
            node_total = sum(per.values())
            total += node_total
            role = "leader  " if i == leader else "follower"
            groups = " ".join(f"{g}={v:.0f}" for g, v in sorted(per.items()) if v >= 1)
            print(f"  node {i} {role} cpu_us_per_create: {groups} total={node_total:.0f}")
            wrote = {g: (wrote1[g] - wrote0.get(g, 0)) / n for g in wrote1}
            print(f"  node {i} {role} bytes_written_per_create: " + " ".join(
                f"{g}={v:.0f}" for g, v in sorted(wrote.items()) if v >= 1))
        print(f"  cluster cpu_us_per_create={total:.0f}")
    finally:
        procs.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
