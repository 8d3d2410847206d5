#!/usr/bin/env python3
"""Runs one command and records how long it took and how much memory it used.

    measure.py --results FILE --step STEP --tool TOOL [--user USER] [--log FILE]
               [--bytes N] [--stored PATH] [--agent NAME] -- COMMAND...

Appends one JSON line to FILE:
  seconds     wall time from start to exit (a thread waits for the exit, so it is exact)
  peak_kib    peak of the summed resident set of the command's process tree, sampled
              every --interval seconds
  largest_kib the largest single process's peak (VmHWM, and the kernel's ru_maxrss)
  agent_kib   peak (VmHWM) of the processes named --agent, e.g. pgbackup itself
  stored      bytes the files under --stored grew by (what it wrote; a repository may
              already hold an earlier round's backup)
  bytes       the --bytes given (the data the step moved, for MiB/s)
and exits with the command's exit code. --user runs the command as that OS user (with
its home directory as HOME), as PostgreSQL's own tools would run.
"""

import argparse
import json
import os
import pwd
import shlex
import subprocess
import sys
import threading
import time


def process_parents():
    """pid -> parent pid of every process."""
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The name may hold spaces and parentheses: the fields follow the last ')'.
        fields = stat[stat.rindex(b")") + 2 :].split()
        parents[int(entry)] = int(fields[1])
    return parents


def process_tree(root):
    """root and all its descendants."""
    children = {}
    for pid, parent in process_parents().items():
        children.setdefault(parent, []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def memory(pid):
    """(name, VmRSS KiB, VmHWM KiB) of a process, None once it is gone."""
    name, rss, hwm = None, 0, 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Name:"):
                    name = line.split(None, 1)[1].strip()
                elif line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        return None
    return name, rss, hwm


class Sampler:
    """Peak memory of a process tree, sampled until stopped."""

    def __init__(self, root, agent):
        self.root, self.agent = root, agent
        self.peak_kib = self.largest_kib = self.agent_kib = 0

    def sample(self):
        total = 0
        for pid in process_tree(self.root):
            seen = memory(pid)
            if seen is None:
                continue
            name, rss, hwm = seen
            total += rss
            self.largest_kib = max(self.largest_kib, hwm)
            if self.agent and name == self.agent:
                self.agent_kib = max(self.agent_kib, hwm)
        self.peak_kib = max(self.peak_kib, total)


def stored_bytes(path):
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", required=True)
    parser.add_argument("--step", required=True)
    parser.add_argument("--tool", required=True)
    parser.add_argument("--user")
    parser.add_argument("--log", default=os.devnull)
    parser.add_argument("--cwd")
    parser.add_argument("--bytes", type=int, default=0)
    parser.add_argument("--stored")
    parser.add_argument("--agent", help="process name whose own peak is recorded")
    parser.add_argument("--note", default="")
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")

    stored_before = stored_bytes(args.stored) if args.stored else 0
    extra = {}
    env = dict(os.environ)
    if args.user:
        account = pwd.getpwnam(args.user)
        extra = dict(user=account.pw_uid, group=account.pw_gid, extra_groups=[])
        env["HOME"] = account.pw_dir
    with open(args.log, "ab") as log:
        started = time.monotonic()
        child = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            cwd=args.cwd, env=env, **extra,
        )
        ended = {}

        def wait():
            _, status, usage = os.wait4(child.pid, 0)
            ended["time"] = time.monotonic()
            ended["status"] = status
            ended["usage"] = usage

        waiter = threading.Thread(target=wait)
        sampler = Sampler(child.pid, args.agent)
        waiter.start()
        while waiter.is_alive():
            sampler.sample()
            waiter.join(args.interval)
    code = os.waitstatus_to_exitcode(ended["status"])
    child.returncode = code  # reaped by wait4 above
    agent_kib = sampler.agent_kib
    if args.agent and os.path.basename(command[0]) == args.agent:
        # The agent is the root of the tree: the kernel's figure covers it exactly (and
        # its children, which are far smaller: pg_basebackup, tar).
        agent_kib = max(agent_kib, ended["usage"].ru_maxrss)
    record = {
        "step": args.step,
        "tool": args.tool,
        "command": shlex.join(command),
        "seconds": ended["time"] - started,
        "exit_code": code,
        "peak_kib": max(sampler.peak_kib, ended["usage"].ru_maxrss),
        "largest_kib": max(sampler.largest_kib, ended["usage"].ru_maxrss),
        "agent_kib": agent_kib,
        "bytes": args.bytes,
        "note": args.note,
    }
    if args.stored:
        record["stored"] = stored_bytes(args.stored) - stored_before
    if code == 0:
        with open(args.results, "a") as out:
            out.write(json.dumps(record) + "\n")
    sys.exit(code)


if __name__ == "__main__":
    main()
