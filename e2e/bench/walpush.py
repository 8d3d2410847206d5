#!/usr/bin/env python3
"""Times an archive_command the way PostgreSQL runs it: one `sh -c` per WAL segment,
one after the other, from the data directory, with %p (path relative to the data
directory) and %f (file name) filled in.

    walpush.py --results FILE --tool TOOL --segments DIR --pgdata DIR [--user USER]
               [--backlog] [--stored PATH] [--log FILE] -- 'ARCHIVE COMMAND with %p and %f'

One ready at a time (the default, a server whose archiving keeps up): each segment of DIR
is first copied into <pgdata>/pg_wal (not timed), then the command is timed from fork to
exit, then the copy is removed.

--backlog (a server whose archiving fell behind, e.g. after a bulk load): every segment
is first copied into pg_wal and marked ready in pg_wal/archive_status (not timed), then the
command runs for each in turn as PostgreSQL's archiver runs it, the segment marked done
and removed after each success; a tool that archives asynchronously can work ahead.

Appends one JSON line to FILE with every latency, p50/p90/p99/max in ms, segments per
second (segments / summed time) and the largest ru_maxrss of any invocation; with --agent
NAME also the peak of any process of that name meanwhile (a worker a command leaves
behind). Stops at the first failure.
"""

import argparse
import json
import math
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import threading
import time


def percentile(values, fraction):
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def stored_bytes(path):
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


class Watcher(threading.Thread):
    """Peak VmHWM of every process named NAME while it runs: a worker a command leaves
    behind is counted too."""

    def __init__(self, name):
        super().__init__(daemon=True)
        self.name, self.peak_kib, self.stopped = name, 0, threading.Event()

    def run(self):
        while not self.stopped.wait(0.02):
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{pid}/status") as f:
                        fields = dict(line.split(":", 1) for line in f if ":" in line)
                except OSError:
                    continue
                if fields.get("Name", "").strip() == self.name and "VmHWM" in fields:
                    self.peak_kib = max(self.peak_kib, int(fields["VmHWM"].split()[0]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", required=True)
    parser.add_argument("--tool", required=True)
    parser.add_argument("--segments", required=True)
    parser.add_argument("--pgdata", required=True)
    parser.add_argument("--user")
    parser.add_argument("--stored")
    parser.add_argument("--backlog", action="store_true")
    parser.add_argument("--agent", help="process name whose peak is recorded, workers included")
    parser.add_argument("--log", default=os.devnull)
    parser.add_argument("--note", default="")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if len(command) != 1:
        parser.error("give the archive command as one argument")
    template = command[0]

    extra, env = {}, dict(os.environ)
    if args.user:
        account = pwd.getpwnam(args.user)
        extra = dict(user=account.pw_uid, group=account.pw_gid, extra_groups=[])
        env["HOME"] = account.pw_dir
    pg_wal = os.path.join(args.pgdata, "pg_wal")
    status_dir = os.path.join(pg_wal, "archive_status")
    os.makedirs(status_dir, exist_ok=True)
    names = sorted(n for n in os.listdir(args.segments) if len(n) == 24)

    def place(name):
        target = os.path.join(pg_wal, name)
        shutil.copyfile(os.path.join(args.segments, name), target)
        if args.user:
            os.chown(target, extra["user"], extra["group"])
        if args.backlog:
            ready = os.path.join(status_dir, name + ".ready")
            open(ready, "w").close()
            if args.user:
                os.chown(ready, extra["user"], extra["group"])

    if args.backlog:
        for name in names:
            place(name)
    latencies, max_rss = [], 0
    watcher = Watcher(args.agent) if args.agent else None
    if watcher:
        watcher.start()
    with open(args.log, "ab") as log:
        for name in names:
            target = os.path.join(pg_wal, name)
            if not args.backlog:
                place(name)
            line = template.replace("%p", os.path.join("pg_wal", name)).replace("%f", name)
            started = time.monotonic()
            child = subprocess.Popen(
                ["/bin/sh", "-c", line], cwd=args.pgdata, env=env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, **extra,
            )
            _, status, usage = os.wait4(child.pid, 0)
            took = time.monotonic() - started
            child.returncode = os.waitstatus_to_exitcode(status)
            if child.returncode == 0 and args.backlog:
                os.rename(os.path.join(status_dir, name + ".ready"), os.path.join(status_dir, name + ".done"))
            os.unlink(target)
            if child.returncode != 0:
                sys.exit(f"walpush: {args.tool} failed on {name} (exit {child.returncode}); see {args.log}")
            latencies.append(took)
            max_rss = max(max_rss, usage.ru_maxrss)
    if watcher:
        watcher.stopped.set()
        watcher.join()
    for marker in os.listdir(status_dir):  # the next tool starts with nothing ready
        os.unlink(os.path.join(status_dir, marker))
    total = sum(latencies)
    record = {
        "step": "wal-push-backlog" if args.backlog else "wal-push",
        "tool": args.tool,
        "command": template,
        "segments": len(latencies),
        "seconds": total,
        "p50_ms": 1000 * statistics.median(latencies),
        "p90_ms": 1000 * percentile(latencies, 0.90),
        "p99_ms": 1000 * percentile(latencies, 0.99),
        "max_ms": 1000 * max(latencies),
        "segments_per_second": len(latencies) / total,
        "bytes": sum(os.path.getsize(os.path.join(args.segments, n)) for n in names),
        "peak_kib": max(max_rss, watcher.peak_kib if watcher else 0),
        "largest_kib": max_rss,
        "agent_kib": max(max_rss, watcher.peak_kib if watcher else 0),
        "latencies_ms": [round(1000 * t, 2) for t in latencies],
        "note": args.note,
    }
    if args.stored:
        record["stored"] = stored_bytes(args.stored)
    with open(args.results, "a") as out:
        out.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
