#!/usr/bin/env python3
"""Measures how far the streaming WAL archiver (`pgbackup wal-archive`) trails the server
while a load runs.

    lagprobe.py --results FILE --metrics URL --agent-pid PID --psql 'psql … -c' \
                [--segment-size BYTES] [--drain-timeout S] [--log FILE] -- LOAD COMMAND…

Runs the load command (pgbench) and, every --interval seconds until it ends, samples the
server's WAL write position (pg_current_wal_lsn()) and the archiver's /metrics
(pgbackup_wal_last_archived_lsn: the end of the last complete segment stored). Then it
keeps sampling until the archiver has stored every segment the server completed, or
--drain-timeout passes.

The lag of a segment is the time from the moment the server's write position passed the
segment's end (interpolated between samples) to the first sample at which the archiver
reports it stored: end-to-end, receive + compress + upload, to within one interval.
Appends one JSON line to FILE with p50/p90/max lag, the archiver's own lag gauge and
backlog at their highest, the archiver's peak RSS (VmHWM) and pg_receivewal's.
"""

import argparse
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
import urllib.request


def parse_lsn(text):
    high, low = text.strip().split("/")
    return (int(high, 16) << 32) | int(low, 16)


def metrics(url):
    values = {}
    with urllib.request.urlopen(url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name, _, value = line.rpartition(" ")
            values[name.split("{")[0]] = float(value)
    return values


def peak_memory(pid):
    """VmHWM (KiB) of pid and of its children by name."""
    found = {}
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read()
                parents[int(entry)] = int(stat[stat.rindex(b")") + 2 :].split()[1])
            except OSError:
                pass
    for candidate in [pid] + [p for p, parent in parents.items() if parent == pid]:
        try:
            with open(f"/proc/{candidate}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
            name = status["Name"].strip()
            found[name] = max(found.get(name, 0), int(status["VmHWM"].split()[0]))
        except (OSError, KeyError):
            pass
    return found


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", required=True)
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--agent-pid", type=int, required=True)
    parser.add_argument("--psql", required=True, help="psql command line ending in -c")
    parser.add_argument("--segment-size", type=int, default=16 * 1024 * 1024)
    parser.add_argument("--interval", type=float, default=0.25)
    parser.add_argument("--drain-timeout", type=float, default=120)
    parser.add_argument("--log", default=os.devnull)
    parser.add_argument("--note", default="")
    parser.add_argument("--archiver-command", default="", help="for the record")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    load = args.command[1:] if args.command[:1] == ["--"] else args.command
    psql = shlex.split(args.psql)

    def server_lsn():
        out = subprocess.run(psql + ["SELECT pg_current_wal_lsn()"], check=True,
                             capture_output=True, text=True).stdout
        return parse_lsn(out)

    written, stored = [], []  # (time, lsn)
    gauge_lag = backlog = 0.0
    memory = {}

    def sample():
        nonlocal gauge_lag, backlog
        before = time.time()
        lsn = server_lsn()
        written.append(((before + time.time()) / 2, lsn))
        seen = metrics(args.metrics)
        stored.append((time.time(), int(seen.get("pgbackup_wal_last_archived_lsn", 0))))
        gauge_lag = max(gauge_lag, seen.get("pgbackup_wal_archive_lag_seconds", 0.0))
        backlog = max(backlog, seen.get("pgbackup_wal_archive_backlog_segments", 0.0))
        for name, kib in peak_memory(args.agent_pid).items():
            memory[name] = max(memory.get(name, 0), kib)

    def archiver_alive():
        try:
            os.kill(args.agent_pid, 0)
            return True
        except OSError:
            return False

    sample()
    start_lsn = written[-1][1]
    with open(args.log, "ab") as log:
        started = time.time()
        child = subprocess.Popen(load, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        while child.poll() is None:
            if not archiver_alive():
                child.kill()
                sys.exit("lagprobe: the archiver died during the load")
            sample()
            time.sleep(args.interval)
    load_seconds = time.time() - started
    if child.returncode != 0:
        sys.exit(f"lagprobe: the load failed (exit {child.returncode}); see {args.log}")
    sample()
    end_lsn = written[-1][1]
    last_boundary = end_lsn // args.segment_size * args.segment_size
    drain_started = time.time()
    while stored[-1][1] < last_boundary and time.time() - drain_started < args.drain_timeout:
        if not archiver_alive():
            sys.exit("lagprobe: the archiver died")
        time.sleep(args.interval)
        sample()
    drained = stored[-1][1] >= last_boundary

    boundaries = range(
        (start_lsn // args.segment_size + 1) * args.segment_size,
        last_boundary + 1,
        args.segment_size,
    )
    lags, missing = [], 0
    for boundary in boundaries:
        finished = None
        for (t1, l1), (t2, l2) in zip(written, written[1:]):
            if l1 < boundary <= l2:
                finished = t1 + (boundary - l1) / (l2 - l1) * (t2 - t1)
                break
        arrived = next((t for t, lsn in stored if lsn >= boundary), None)
        if finished is None:
            continue
        if arrived is None:
            missing += 1
        else:
            lags.append(max(0.0, arrived - finished))

    with open(args.log, errors="replace") as f:
        tps = re.findall(r"tps = ([0-9.]+)", f.read())
    record = {
        "step": "wal-archive",
        "tool": "pgbackup wal-archive",
        "command": args.archiver_command,
        "load_command": shlex.join(load),
        "load_seconds": load_seconds,
        "segments": len(lags) + missing,
        "segments_not_stored": missing,
        "caught_up": drained,
        "catch_up_seconds": time.time() - drain_started if drained else None,
        "wal_bytes": end_lsn - start_lsn,
        "lag_p50_s": statistics.median(lags) if lags else None,
        "lag_p90_s": percentile(lags, 0.90) if lags else None,
        "lag_max_s": max(lags) if lags else None,
        "gauge_lag_max_s": gauge_lag,
        "backlog_max": backlog,
        "tps": float(tps[-1]) if tps else None,
        "memory_kib": memory,
        "agent_kib": memory.get("pgbackup", 0),
        "peak_kib": sum(memory.values()),
        "note": args.note,
    }
    with open(args.results, "a") as out:
        out.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
