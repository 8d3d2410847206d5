#!/usr/bin/env python3
"""Prints the benchmark's results: one table, the same as Markdown, the targets met or
missed, and every command timed.

    report.py RESULTS.jsonl key=value…

RESULTS.jsonl holds the lines measure.py, walpush.py and lagprobe.py wrote; key=value
pairs describe the run (scale, data_bytes, versions, rounds, …). When a step ran in
several rounds, its best round is reported and the others are named in its notes.
"""

import json
import sys

MIB = 1024 * 1024
OURS = "pgbackup"
# Each pgbackup row and what it is compared with: the same kind of repository, the same
# compression level. `barman` stands for barman-cloud at its fastest compression.
PARTNERS = {
    ("backup", "pgbackup file zstd-3"): "pgbackrest posix zst-3",
    ("backup", "pgbackup file zstd-1"): "pgbackrest posix zst-1",
    ("backup", "pgbackup s3 zstd-3"): "barman",
    ("restore", "pgbackup file"): "pgbackrest posix",
    ("restore", "pgbackup s3"): "barman",
    ("wal-push", "pgbackup file"): "pgbackrest posix",
    ("wal-push", "pgbackup s3"): "barman",
    ("wal-push-backlog", "pgbackup file"): "pgbackrest posix async",
    ("wal-replay", "pgbackup wal-fetch"): "pgbackrest archive-get async",
}
LIMITS = {
    ("backup", "pgbackup file zstd-1"): "tar | zstd -T0 -1 (limit)",
    ("backup", "pgbackup file zstd-3"): "tar | zstd -T0 -3",
    ("restore", "pgbackup file"): "zstd -d | tar -x (limit)",
}
STEPS = {
    "backup": "physical backup",
    "restore": "restore",
    "wal-push": "WAL push, one ready (archive_command)",
    "wal-push-backlog": "WAL push, backlog (archive_command)",
    "wal-replay": "WAL replay (restore_command)",
    "wal-archive": "WAL streaming (wal-archive)",
}


def mib(kib_or_bytes, unit=1):
    return f"{kib_or_bytes * unit / MIB:.0f}"


def partner(by_key, step, tool):
    """The row a pgbackup row is compared with, if it ran."""
    name = PARTNERS.get((step, tool))
    if name == "barman":
        barmans = [r for (s, t), r in by_key.items() if s == step and t.startswith("barman-cloud")]
        return min(barmans, key=cost) if barmans else None
    return by_key.get((step, name)) if name else None


def cost(record):
    if record["step"].startswith("wal-push"):
        return record["p50_ms"]
    if record["step"] == "wal-archive":
        lag = record["lag_max_s"]
        return float("inf") if lag is None else lag
    return record["seconds"]


def best_rounds(records):
    """(step, tool) -> its fastest record, with the times of every round in `rounds`."""
    by_key = {}
    for record in records:
        key = (record["step"], record["tool"])
        earlier = by_key.get(key)
        kept = record if earlier is None or cost(record) < cost(earlier) else earlier
        kept["rounds"] = (earlier["rounds"] if earlier else []) + [cost(record)]
        # Memory is a ceiling: the worst round's.
        for field in ("peak_kib", "agent_kib"):
            worst = max(record.get(field) or 0, (earlier or {}).get(field) or 0)
            if worst:
                kept[field] = worst
        by_key[key] = kept
    return by_key


def row(record, by_key):
    """The table cells of one result: step, tool, time, MiB/s, RSS, stored, ratios, notes."""
    step, tool = record["step"], record["tool"]
    notes = []
    if len(record.get("rounds", [])) > 1:
        unit = "ms" if step.startswith("wal-push") else "s"
        notes.append("best of " + ", ".join(f"{t:.2f}" for t in record["rounds"]) + f" {unit}")
    ratio = ""
    theirs = partner(by_key, step, tool)
    if theirs:
        ratio = f"{cost(record) / cost(theirs):.2f} ({theirs['tool']})"
    limit = by_key.get((step, LIMITS.get((step, tool))))
    if limit:
        ratio += f"; {cost(record) / cost(limit):.2f}x the limit"
    if step in ("backup", "restore", "wal-replay"):
        seconds = record["seconds"]
        time = f"{seconds:.1f} s"
        rate = f"{record['bytes'] / MIB / seconds:.0f}"
        stored = mib(record["stored"]) if "stored" in record else ""
        if step == "restore":
            stored += " (restored)"
        if step == "wal-replay":
            segments = record["bytes"] // (16 * MIB)
            notes.append(f"{segments} segments, {segments / seconds:.1f} segments/s")
        if record.get("agent_kib"):
            notes.append(f"pgbackup process alone {mib(record['agent_kib'], 1024)} MiB")
    elif step.startswith("wal-push"):
        time = f"p50 {record['p50_ms']:.0f} ms, p99 {record['p99_ms']:.0f} ms"
        rate = f"{record['bytes'] / MIB / record['seconds']:.0f}"
        stored = mib(record.get("stored", 0))
        notes.append(f"{record['segments']} segments, {record['segments_per_second']:.1f} segments/s")
    else:  # wal-archive
        if record["lag_max_s"] is None:
            time = "no segment stored"
        else:
            time = f"lag p50 {record['lag_p50_s']:.1f} s, max {record['lag_max_s']:.1f} s"
        rate = f"{record['wal_bytes'] / MIB / record['load_seconds']:.1f}"
        stored = ""
        memory = record.get("memory_kib", {})
        notes.append(
            f"{record['segments']} segments in {record['load_seconds']:.0f} s of load"
            + (f" ({record['tps']:.0f} tps)" if record.get("tps") else "")
        )
        if record["segments_not_stored"]:
            notes.append(f"{record['segments_not_stored']} never stored")
        notes.append(f"archiver's lag gauge max {record['gauge_lag_max_s']:.1f} s")
        if "pg_receivewal" in memory:
            notes.append(f"pg_receivewal {mib(memory['pg_receivewal'], 1024)} MiB")
        return [STEPS[step], tool, time, rate, mib(record["agent_kib"], 1024), stored, ratio, "; ".join(notes)]
    return [STEPS[step], tool, time, rate, mib(record["peak_kib"], 1024), stored, ratio, "; ".join(notes)]


HEADER = ["step", "tool", "time", "MiB/s", "peak RSS MiB", "stored MiB", "ours/theirs", "notes"]


def plain(rows):
    widths = [max(len(r[i]) for r in [HEADER] + rows) for i in range(len(HEADER))]
    lines = []
    for r in [HEADER] + rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
        if r is HEADER:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown(rows):
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in rows:
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in r) + " |")
    return "\n".join(lines)


def targets(by_key):
    """(target, met, measured) for each of the team's targets that could be measured."""
    out = []
    get = lambda step, tool: by_key.get((step, tool))

    def versus(step, tool, at_most, words):
        ours, theirs = get(step, tool), partner(by_key, step, tool)
        if ours and theirs:
            factor = cost(ours) / cost(theirs)
            out.append((f"{tool} {words} {theirs['tool']}", factor <= at_most,
                        f"{factor:.2f}x ({cost(ours):.2f} vs {cost(theirs):.2f})"))

    def within(step, tool, at_most):
        ours, limit = get(step, tool), get(step, LIMITS.get((step, tool)))
        if ours and limit:
            factor = cost(ours) / cost(limit)
            out.append((f"{tool} within {at_most}x of {limit['tool']}", factor <= at_most,
                        f"{factor:.2f}x ({cost(ours):.2f} s vs {cost(limit):.2f} s)"))

    # 1.3x faster: pgbackup's time at most 1/1.3 of pgBackRest's.
    versus("backup", "pgbackup file zstd-3", 1 / 1.3, "backup >= 1.3x faster than")
    versus("backup", "pgbackup file zstd-1", 1 / 1.3, "backup >= 1.3x faster than")
    versus("backup", "pgbackup s3 zstd-3", 1.0, "backup no slower than")
    within("backup", "pgbackup file zstd-1", 1.5)
    versus("restore", "pgbackup file", 1.0, "restore no slower than")
    within("restore", "pgbackup file", 1.5)
    versus("wal-replay", "pgbackup wal-fetch", 1.0, "recovery no slower than")
    for step, words in (("wal-push", "one segment ready at a time"), ("wal-push-backlog", "a backlog")):
        push = get(step, "pgbackup file")
        if push:
            out.append((f"WAL push p50 < 25 ms per segment, {words}", push["p50_ms"] < 25,
                        f"p50 {push['p50_ms']:.1f} ms, {push['segments_per_second']:.1f} segments/s"))
        versus(step, "pgbackup file", 1.0, "WAL push no slower than")
    stream = get("wal-archive", "pgbackup wal-archive")
    if stream:
        lag = stream["lag_max_s"]
        met = lag is not None and lag < 10 and not stream["segments_not_stored"]
        out.append(("streaming archiver lag < 10 s under load", met,
                    "no segment stored" if lag is None else f"max {lag:.1f} s, p50 {stream['lag_p50_s']:.1f} s"))
    agents = [(r["agent_kib"], f"{r['step']}") for k, r in by_key.items()
              if k[1].startswith(OURS) and r.get("agent_kib")]
    if agents:
        peak, where = max(agents)
        out.append(("agent peak RSS < 150 MiB", peak < 150 * 1024, f"{peak / 1024:.0f} MiB (in {where})"))
    return out


def main():
    records = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    meta = dict(arg.split("=", 1) for arg in sys.argv[2:])
    by_key = best_rounds(records)
    rows = [row(r, by_key) for r in by_key.values()]

    data = int(meta.get("data_bytes", 0))
    print()
    print(f"pgbackup {meta.get('pgbackup', '?')} ({meta.get('revision', '?')}) vs barman-cloud "
          f"{meta.get('barman', '?')} vs pgBackRest "
          f"{meta.get('pgbackrest', '?')}, zstd {meta.get('zstd', '?')}")
    print(f"PostgreSQL {meta.get('postgres', '?')}, pgbench scale {meta.get('scale', '?')}"
          f"{' plus random text' if meta.get('data') == 'mixed' else ' alone'}: "
          f"{data / MIB:.0f} MiB to back up; {meta.get('cpus', '?')} CPUs; S3: {meta.get('s3', '?')}; "
          f"warm page cache; best of {meta.get('rounds', '1')} round(s)")
    load = meta.get("load_before", "")
    if load:
        busy = float(load.split()[0]) > int(meta.get("cpus", 1)) / 2
        print(f"Load average before the run: {load}"
              + (" -- WARNING: the machine was busy, the times may be skewed" if busy else ""))
    print()
    print(plain(rows))
    print()
    print("ours/theirs: a pgbackup row's time (WAL push: p50) over the time of the row named, a repository of the")
    print("same kind at the same level, and over the machine's limit; below 1 means pgbackup is faster.")
    print("MiB/s: the data directory (without pg_wal) over the time; WAL push: segment bytes over the summed")
    print("latencies; streaming: the WAL rate the load produced. peak RSS: the tool's whole process tree")
    print("(streaming: the pgbackup process).")
    print()
    print("Targets:")
    for target, met, measured in targets(by_key):
        print(f"  {'met   ' if met else 'MISSED'}  {target}: {measured}")
    print()
    print("Markdown:")
    print()
    print(markdown(rows))
    print()
    print(f"Run with: {meta.get('invocation', '?')}")
    print("Commands timed (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION in the environment;")
    print("PGHOST, PGPORT, PGUSER for pgbackup; WAL push commands run from the data directory as archive_command):")
    for r in by_key.values():
        print(f"  [{r['step']} / {r['tool']}] {r['command']}")
        if r.get("load_command"):
            print(f"  [{r['step']} / load] {r['load_command']}")


if __name__ == "__main__":
    main()
