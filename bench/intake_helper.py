#!/usr/bin/env python3
"""
Measurement helper for bench/intake.sh (standard library only).

Subcommands:
  freeport                      print a free TCP port on 127.0.0.1
  wait-log FILE TEXT --pid PID  wait (bounded) until FILE contains TEXT
  wait-port PORT                wait (bounded) until 127.0.0.1:PORT accepts
  srcstate REPO DIR...          fingerprint of the source a gomail run imports
  load --out F [--server-pid P] -- CMD...
                                run the load generator, record wall time,
                                server CPU (utime+stime of P) and machine CPU
  drain --kind gomail|postfix --out F ...
                                wait (bounded) until everything accepted has
                                been delivered, count accepted/delivered and
                                collect warnings from the server's log
  summarize --runs DIR --out F  aggregate the per-run JSON files, print the
                                table and write the summary JSON

Every wait here has a deadline; nothing loops unbounded.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- small utilities ----------------------------------------------------------

def process_tree(pid: int) -> list[int]:
    """C{pid} and its live descendants (gomail's spool writer process is its child)."""
    pids, index = [pid], 0
    while index < len(pids):
        for text in _task_files(pids[index], "children"):
            pids.extend(int(child) for child in text.split())
        index += 1
    return pids


def _task_files(pid: int, name: str) -> list[str]:
    """The text of /proc/PID/task/*/NAME for each live thread of a process ([] once it is gone)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    texts = []
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/{name}") as f:
                texts.append(f.read())
        except OSError:
            pass
    return texts


def _own_cpu_split(pid: int, reaped: bool = False) -> tuple[float, float] | None:
    """(utime, stime) of one process, with its reaped children's (cutime, cstime) added when C{reaped}."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces: split after its closing parenthesis.
    fields = data[data.rindex(")") + 2:].split()
    user, system = int(fields[11]), int(fields[12])  # fields 14 and 15 of stat(5)
    if reaped:
        user, system = user + int(fields[13]), system + int(fields[14])  # cutime, cstime
    return user / CLK_TCK, system / CLK_TCK


def proc_cpu_split(pid: int) -> tuple[float, float] | None:
    """
    (utime, stime) in seconds of a process, its live child processes (all
    threads) and the children it has reaped (Postfix's master: its daemons
    come and go, each one's time passes to the master when it exits); None if it is gone.
    """
    own = _own_cpu_split(pid, reaped=True)
    if own is None:
        return None
    user, system = own
    for child in process_tree(pid)[1:]:
        split = _own_cpu_split(child)
        if split is not None:
            user, system = user + split[0], system + split[1]
    return user, system


def proc_cpu_seconds(pid: int) -> float | None:
    """utime+stime of a process and its child processes (all threads), in seconds; None if it is gone."""
    split = proc_cpu_split(pid)
    return None if split is None else split[0] + split[1]


def context_switches(pid: int) -> int | None:
    """Voluntary + involuntary context switches of the live threads of a process and its child processes."""
    if not os.path.exists(f"/proc/{pid}"):
        return None
    total = 0
    for process in process_tree(pid):
        for status in _task_files(process, "status"):
            for line in status.splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
    return total


def machine_cpu() -> tuple[int, int, int]:
    """(busy, total, steal) jiffies of all CPUs, from /proc/stat (busy includes steal)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    steal = values[7] if len(values) > 7 else 0  # time the hypervisor gave to other guests
    return total - idle, total, steal


def loadavg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except OSError:
        return False


def read_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def count_files(directory: str, suffix: str = "") -> int:
    try:
        return sum(1 for name in os.listdir(directory) if name.endswith(suffix))
    except OSError:
        return 0


# -- freeport / wait-log --------------------------------------------------------

def cmd_freeport(args: argparse.Namespace) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1])
    return 0


def cmd_wait_log(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if args.text in read_text(args.file):
            return 0
        if args.pid and not alive(args.pid):
            print(f"process {args.pid} exited before {args.text!r} appeared in {args.file}", file=sys.stderr)
            return 1
        time.sleep(0.1)
    print(f"timed out after {args.timeout} s waiting for {args.text!r} in {args.file}", file=sys.stderr)
    return 1


def cmd_wait_port(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", args.port), timeout=1):
                return 0
        except OSError:
            time.sleep(0.1)
    print(f"timed out after {args.timeout} s waiting for 127.0.0.1:{args.port} to accept", file=sys.stderr)
    return 1


def cmd_srcstate(args: argparse.Namespace) -> int:
    """
    Fingerprint of the gomail source a server is about to import: a hash of
    every .py file under the package directories and the uncommitted changes
    git sees (read-only git commands). The working tree may be shared with
    other work: a run whose source differs from the others is flagged.
    """
    digest = hashlib.sha256()
    for top in args.dirs:
        for root, dirs, files in sorted(os.walk(os.path.join(args.repo, top))):
            dirs.sort()
            for name in sorted(files):
                if name.endswith(".py"):
                    path = os.path.join(root, name)
                    digest.update(os.path.relpath(path, args.repo).encode() + b"\0")
                    with open(path, "rb") as f:
                        digest.update(f.read())
    try:
        head = subprocess.run(["git", "-C", args.repo, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", args.repo, "status", "--porcelain", "--", *args.dirs, "setup.cfg"],
                               capture_output=True, text=True, timeout=30).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        head, dirty = "unknown", []
    print(json.dumps({"sha256": digest.hexdigest()[:16], "commit": head, "uncommitted": dirty}))
    return 0


# -- load -----------------------------------------------------------------------

def cmd_load(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    result: dict = {"command": command, "loadavg_start": loadavg()}
    cpu_before = proc_cpu_seconds(args.server_pid) if args.server_pid else None
    split_before = proc_cpu_split(args.server_pid) if args.server_pid else None
    cs_before = context_switches(args.server_pid) if args.server_pid else None
    busy0, total0, steal0 = machine_cpu()
    stopping: list[int] = []
    children: list[subprocess.Popen] = []

    def stop_child(signum, frame):
        # The bench script is stopping: take the load generator along (the
        # wait below returns once it has gone; a second signal kills it).
        stopping.append(signum)
        for child in children:
            child.send_signal(signal.SIGTERM if len(stopping) == 1 else signal.SIGKILL)

    signal.signal(signal.SIGTERM, stop_child)
    signal.signal(signal.SIGINT, stop_child)
    with open(args.output_file, "wb") as output:
        start = time.monotonic()
        if not stopping:
            children.append(subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL))
            rc = children[0].wait()
        if stopping:
            return 128 + stopping[0]
        wall = time.monotonic() - start
    result["start_monotonic"] = start  # CLOCK_MONOTONIC: comparable with the drain's samples
    cpu_after = proc_cpu_seconds(args.server_pid) if args.server_pid else None
    split_after = proc_cpu_split(args.server_pid) if args.server_pid else None
    cs_after = context_switches(args.server_pid) if args.server_pid else None
    busy1, total1, steal1 = machine_cpu()
    lines = [line for line in read_text(args.output_file).splitlines() if line.strip()]
    result.update({
        "rc": rc,
        "wall_s": wall,
        "machine_busy_pct": 100.0 * (busy1 - busy0) / max(1, total1 - total0),
        "machine_steal_pct": 100.0 * (steal1 - steal0) / max(1, total1 - total0),
        "loadgen_output_lines": len(lines),
        "loadgen_output_first": lines[:20],
    })
    if cpu_before is not None and cpu_after is not None:
        result["server_cpu_intake_s"] = cpu_after - cpu_before
        result["server_cpu_before_s"] = cpu_before
    if split_before and split_after:
        result["server_utime_intake_s"] = split_after[0] - split_before[0]
        result["server_stime_intake_s"] = split_after[1] - split_before[1]
    if cs_before is not None and cs_after is not None:
        result["server_context_switches_intake"] = cs_after - cs_before
    # Written whole, then renamed: a drain running alongside waits for this file.
    with open(args.out + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(args.out + ".tmp", args.out)
    return 0


# -- drain ----------------------------------------------------------------------

GOMAIL_QUEUED = re.compile(r"#info\] queued \S+ (?:from|for) ")
GOMAIL_DELIVERED = re.compile(r"#info\] \S+ to <[^>]*>: \S+ 2\d\d ")
GOMAIL_DEFERRED = re.compile(r"#info\] \S+ deferred: ")
GOMAIL_LEVEL = re.compile(r"^\S+ \[([^\]#]*)#(warn|error|critical)\] (.*)$")
POSTFIX_DISCONNECT = re.compile(r"postfix/smtpd\[\d+\]: disconnect from .* data=(\d+)(?:/(\d+))?")
POSTFIX_PROBLEM = re.compile(r"(warning|fatal|panic|error): |reject: |status=(deferred|bounced)")
SINK_COUNT = re.compile(r"mesg=(\d+)")
# qmgr's "mail for X is using up N of N active queue entries" is followed by advice lines
POSTFIX_ADVICE = re.compile(r"qmgr\[\d+\]: warning: (you may need|so that Postfix|please avoid|lots of deferred|to turn off these)")
POSTFIX_LINE_PREFIX = re.compile(r"^\w{3} [ \d]\d \d\d:\d\d:\d\d \S+ ")


class Tail:
    """
    The complete records (ending with C{sep}) appended to a growing file since
    the last call: polling a log costs what it grew by, not its whole size.
    """

    def __init__(self, path: str, sep: bytes = b"\n") -> None:
        self.path, self.sep, self.offset, self.carry = path, sep, 0, b""

    def read(self) -> str:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return ""
        self.offset += len(data)
        data = self.carry + data
        cut = data.rfind(self.sep) + 1
        self.carry = data[cut:]
        return data[:cut].decode("utf-8", "replace")


class SinkCounter:
    """smtp-sink -c's running 'mesg=' counter (records end with CR), read incrementally."""

    def __init__(self, path: str) -> None:
        self.tail, self.count = Tail(path, b"\r"), 0

    def poll(self) -> int:
        found = SINK_COUNT.findall(self.tail.read())
        if found:
            self.count = int(found[-1])
        return self.count


class GomailLog:
    """Counts in gomail's log: accepted (queued), delivered with a 2xx (local or relay), deferred."""

    def __init__(self, path: str) -> None:
        self.tail = Tail(path)
        self.counts = {"accepted": 0, "delivered_logged": 0, "deferred_logged": 0}

    def poll(self) -> dict:
        text = self.tail.read()
        if text:
            self.counts["accepted"] += len(GOMAIL_QUEUED.findall(text))
            self.counts["delivered_logged"] += len(GOMAIL_DELIVERED.findall(text))
            self.counts["deferred_logged"] += len(GOMAIL_DEFERRED.findall(text))
        return dict(self.counts)


class PostfixLog:
    """Accepted messages and logged sessions from smtpd's per-session 'disconnect' summaries."""

    def __init__(self, path: str) -> None:
        self.tail = Tail(path)
        self.counts = {"accepted": 0, "sessions_logged": 0}

    def poll(self) -> dict:
        for ok, _total in POSTFIX_DISCONNECT.findall(self.tail.read()):
            self.counts["accepted"] += int(ok)
            self.counts["sessions_logged"] += 1
        return dict(self.counts)


def gomail_problems(log: str) -> dict:
    """Warnings/errors/tracebacks in the twistd text log, grouped by message."""
    groups: dict[str, dict] = {}
    tracebacks = 0
    for line in log.splitlines():
        if "Traceback (most recent call last)" in line:
            tracebacks += 1
        m = GOMAIL_LEVEL.match(line)
        if not m:
            continue
        if "no TLS certificate configured" in m.group(3):
            continue  # expected: the bench uses the generated self-signed certificate
        # group by the message with ids and numbers blurred
        key = f"{m.group(2)} {m.group(1)}: " + re.sub(r"\b[0-9a-f]{12,}\b|\d+", "N", m.group(3))
        g = groups.setdefault(key, {"count": 0, "example": line})
        g["count"] += 1
    return {"tracebacks": tracebacks,
            "groups": sorted(({"key": k, **v} for k, v in groups.items()), key=lambda g: -g["count"])}


def postfix_problems(log: str) -> dict:
    groups: dict[str, dict] = {}
    for line in log.splitlines():
        if not POSTFIX_PROBLEM.search(line) or POSTFIX_ADVICE.search(line):
            continue
        body = POSTFIX_LINE_PREFIX.sub("", line)
        key = re.sub(r"\[\d+\]|\b[0-9A-F]{8,}\b|\d+", "N", body)
        g = groups.setdefault(key, {"count": 0, "example": line})
        g["count"] += 1
    return {"groups": sorted(({"key": k, **v} for k, v in groups.items()), key=lambda g: -g["count"])}


def cmd_drain(args: argparse.Namespace) -> int:
    """
    Wait until delivered >= accepted (and, for gomail, the queue is empty), at
    most --timeout seconds after the load, giving up earlier after --stall
    seconds without progress (or 2 s after gomail's queue is empty). For
    Postfix, 'accepted' comes from smtpd's per-session log summary, which
    postlogd writes asynchronously: the count must also stop moving.

    Delivered is smtp-sink's counter when --sink-out is given (Postfix; gomail
    relaying), else the files in gomail's Maildir. With --e2e the drain is
    started together with the load (--load-pid) and samples smtp-sink's
    counter from the first connection on, every --poll seconds: the
    end-to-end time is from the start of smtp-source until the sink's count
    first reached the number of accepted messages.
    """
    sink = SinkCounter(args.sink_out) if args.sink_out else None
    timeline: list[tuple[float, int]] = []  # (monotonic time, sink count) at every change seen

    def sample_sink() -> int:
        previous = sink.count
        count = sink.poll()
        if count != previous or not timeline:
            timeline.append((time.monotonic(), count))
        return count

    if args.load_pid:
        # Running alongside the load: watch the sink until the load's result appears.
        give_up = time.monotonic() + args.load_timeout
        while not os.path.exists(args.load_json):
            if sink is not None:
                sample_sink()
            if not alive(args.load_pid) and not os.path.exists(args.load_json):
                print(f"the load (pid {args.load_pid}) ended without writing {args.load_json}", file=sys.stderr)
                return 1
            if time.monotonic() > give_up:
                print(f"timed out after {args.load_timeout} s waiting for the load to finish", file=sys.stderr)
                return 1
            time.sleep(args.poll)
    with open(args.load_json) as f:
        load = json.load(f)

    log_counts = GomailLog(args.log) if args.kind == "gomail" else PostfixLog(args.log)
    start = time.monotonic()
    deadline = start + args.timeout
    last, last_change = None, start
    queued, queue_checked = 0, 0.0
    while True:
        now = time.monotonic()
        counts = log_counts.poll()
        if sink is not None:
            counts["delivered"] = sample_sink()
        else:
            counts["delivered"] = count_files(args.maildir)
        if args.kind == "gomail":
            # Listing a queue of thousands of files is not free: while relayed
            # mail is still arriving at the sink, look once a second.
            if sink is None or counts["delivered"] >= counts["accepted"] or now - queue_checked >= 1.0:
                queued, queue_checked = count_files(args.queue_dir, ".json"), now
            counts["still_queued"] = queued
        if counts != last:
            last, last_change = counts, now
        if args.kind == "gomail":
            done = counts["delivered"] >= counts["accepted"] and counts["still_queued"] == 0
            # An empty queue with the count standing still: nothing more will come.
            done = done or (counts["still_queued"] == 0 and now - last_change >= 2.0)
        else:
            # every session of the load has been logged (or the log has been quiet 2 s)
            logged = counts["sessions_logged"] >= args.expected_sessions or now - last_change >= 2.0
            done = logged and counts["delivered"] >= counts["accepted"]
        if done:
            break
        if now >= deadline or now - last_change >= args.stall:
            counts["drain_incomplete"] = True
            break
        time.sleep(args.poll)
    drained_at = time.monotonic()
    result = dict(counts)
    if args.kind == "gomail" and args.failed_dir:
        result["failed_store"] = count_files(args.failed_dir, ".json")
    load_end = load["start_monotonic"] + load["wall_s"] if "start_monotonic" in load else start
    result["drain_wait_s"] = drained_at - load_end
    if args.server_pid and "server_cpu_before_s" in load:
        cpu = proc_cpu_seconds(args.server_pid)
        if cpu is not None:
            result["server_cpu_total_s"] = cpu - load["server_cpu_before_s"]
    run_e2e = None
    if args.e2e and sink is not None and "start_monotonic" in load:
        t0 = load["start_monotonic"]
        target = counts["accepted"]
        reached = next((t for t, c in timeline if c >= target), None) if target else None
        result["e2e_s"] = reached - t0 if reached is not None else None
        result["sink_timeline"] = [[round(t - t0, 3), c] for t, c in timeline]
        if result["e2e_s"]:
            run_e2e = target / result["e2e_s"]
    log = read_text(args.log)
    result["problems"] = gomail_problems(log) if args.kind == "gomail" else postfix_problems(log)
    source = None
    if args.source_json:
        with open(args.source_json) as f:
            source = json.load(f)
    run = {"side": args.kind, "round": args.round, "gomail_source": source,
           "msgs_per_s": counts["accepted"] / load["wall_s"] if load["wall_s"] > 0 else None,
           "load": load, "drain": result}
    if args.e2e:
        run["e2e_msgs_per_s"] = run_e2e
    with open(args.out, "w") as f:
        json.dump(run, f, indent=1)
    e2e_text = ""
    if args.e2e:
        e2e_text = (f"; end to end {result['e2e_s']:.2f} s = {run_e2e:.0f} msg/s"
                    if run_e2e else "; end to end: NOT ALL ACCEPTED MESSAGES REACHED THE SINK")
    print(f"{args.kind} round {args.round}: {counts['accepted']} accepted in {load['wall_s']:.2f} s = "
          f"{run['msgs_per_s']:.0f} msg/s{e2e_text}; {counts['delivered']} delivered"
          + (" (smtp-sink)" if sink is not None else "")
          + f", done {result['drain_wait_s']:.1f} s after the load"
          + (f"; server CPU {1000 * load['server_cpu_intake_s'] / max(1, counts['accepted']):.2f} ms/msg in the intake window"
             if "server_cpu_intake_s" in load else "")
          + (f"; {counts['deferred_logged']} deferrals logged" if counts.get("deferred_logged") else "")
          + (f"; {counts['still_queued']} still queued" if counts.get("still_queued") else "")
          + (f"; {result['failed_store']} in the failed store" if result.get("failed_store") else "")
          + (f"; smtp-source exit {load['rc']}, {load['loadgen_output_lines']} output lines" if load["rc"] or load["loadgen_output_lines"] else "")
          + (" [DRAIN INCOMPLETE]" if counts.get("drain_incomplete") else ""), flush=True)
    return 0


# -- summarize ------------------------------------------------------------------

def spread(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {"n": len(values), "median": statistics.median(values), "min": min(values), "max": max(values),
            "values": values}


def fmt_spread(s: dict, digits: int = 0) -> str:
    if not s.get("n"):
        return "-"
    f = f"{{:,.{digits}f}}"
    return f"{f.format(s['median'])} ({f.format(s['min'])}–{f.format(s['max'])})"


def cmd_summarize(args: argparse.Namespace) -> int:
    runs = []
    for path in sorted(glob.glob(os.path.join(args.runs, "run-*.json")),
                       key=lambda p: int(re.search(r"run-(\d+)", p).group(1))):
        with open(path) as f:
            runs.append(json.load(f))
    params = json.loads(args.params)
    e2e = params.get("mode") == "e2e"
    local = params.get("mode") == "local"
    sides: dict[str, dict] = {}
    for side in ("gomail", "postfix"):
        rs = [r for r in runs if r["side"] == side]
        rates = [r["msgs_per_s"] for r in rs if r.get("msgs_per_s")]
        entry = {
            "runs": len(rs),
            "msgs_per_s": spread(rates),
            "wall_s": spread([r["load"]["wall_s"] for r in rs]),
            "accepted": [r["drain"]["accepted"] for r in rs],
            "delivered": [r["drain"]["delivered"] for r in rs],
            "drain_wait_s": spread([r["drain"]["drain_wait_s"] for r in rs]),
            "machine_busy_pct": spread([r["load"]["machine_busy_pct"] for r in rs]),
            "machine_steal_pct": spread([r["load"]["machine_steal_pct"] for r in rs
                                         if "machine_steal_pct" in r["load"]]),
            "loadavg_start": [r["load"]["loadavg_start"] for r in rs],
            "loadgen_output_lines": [r["load"]["loadgen_output_lines"] for r in rs],
            "loadgen_rc": [r["load"]["rc"] for r in rs],
            "lost": [r["drain"]["accepted"] - min(r["drain"]["delivered"], r["drain"]["accepted"]) for r in rs],
            "not_accepted": [params["messages"] - r["drain"]["accepted"] for r in rs],
            "drain_incomplete": sum(1 for r in rs if r["drain"].get("drain_incomplete")),
        }
        if e2e:
            entry["e2e_msgs_per_s"] = spread([r["e2e_msgs_per_s"] for r in rs if r.get("e2e_msgs_per_s")])
            entry["e2e_s"] = spread([r["drain"]["e2e_s"] for r in rs if r["drain"].get("e2e_s")])
            entry["e2e_incomplete"] = sum(1 for r in rs if not r.get("e2e_msgs_per_s"))
            # how long after smtp-source's exit the last message reached the sink
            entry["sink_lag_s"] = spread([r["drain"]["e2e_s"] - r["load"]["wall_s"]
                                          for r in rs if r["drain"].get("e2e_s")])
            entry["duplicates"] = [max(0, r["drain"]["delivered"] - r["drain"]["accepted"]) for r in rs]
        if side == "gomail":
            entry["delivered_logged"] = [r["drain"].get("delivered_logged") for r in rs]
            entry["deferred_logged"] = [r["drain"].get("deferred_logged", 0) for r in rs]
            entry["still_queued"] = [r["drain"].get("still_queued", 0) for r in rs]
            entry["failed_store"] = [r["drain"].get("failed_store", 0) for r in rs]
        # The server's CPU: gomail's process tree; Postfix's master, its daemons and those it has reaped.
        entry["cpu_ms_per_msg_intake"] = spread(
            [1000 * r["load"]["server_cpu_intake_s"] / r["drain"]["accepted"]
             for r in rs if r["drain"]["accepted"] and "server_cpu_intake_s" in r["load"]])
        entry["cpu_ms_per_msg_total"] = spread(
            [1000 * r["drain"]["server_cpu_total_s"] / r["drain"]["delivered"]
             for r in rs if r["drain"]["delivered"] and "server_cpu_total_s" in r["drain"]])
        # Per byte of message payload (smtp-source -l): how the cost grows with the size.
        entry["cpu_ns_per_byte_total"] = spread(
            [1e9 * r["drain"]["server_cpu_total_s"] / (r["drain"]["delivered"] * params["size"])
             for r in rs if r["drain"]["delivered"] and "server_cpu_total_s" in r["drain"]])
        entry["cpu_user_ms_per_msg_intake"] = spread(
            [1000 * r["load"]["server_utime_intake_s"] / r["drain"]["accepted"]
             for r in rs if r["drain"]["accepted"] and "server_utime_intake_s" in r["load"]])
        entry["cpu_sys_ms_per_msg_intake"] = spread(
            [1000 * r["load"]["server_stime_intake_s"] / r["drain"]["accepted"]
             for r in rs if r["drain"]["accepted"] and "server_stime_intake_s" in r["load"]])
        entry["context_switches_per_msg_intake"] = spread(
            [r["load"]["server_context_switches_intake"] / r["drain"]["accepted"]
             for r in rs if r["drain"]["accepted"] and "server_context_switches_intake" in r["load"]])
        entry["cpu_busy_pct_intake"] = spread(
            [100 * r["load"]["server_cpu_intake_s"] / r["load"]["wall_s"]
             for r in rs if "server_cpu_intake_s" in r["load"]])
        sides[side] = entry
    def median_ratio(key: str) -> float | None:
        g, p = sides["gomail"].get(key, {}), sides["postfix"].get(key, {})
        return g["median"] / p["median"] if g.get("n") and p.get("n") and p["median"] else None

    intake_ratio = median_ratio("msgs_per_s")
    e2e_ratio = median_ratio("e2e_msgs_per_s") if e2e else None
    ratio = e2e_ratio if e2e else intake_ratio
    summary = {"benchmark": "e2e" if e2e else "intake", "params": params,
               "ratio_gomail_over_postfix_median": ratio, "sides": sides, "runs": runs}
    if e2e:
        summary["ratio_intake_gomail_over_postfix_median"] = intake_ratio
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=1)

    # -- the table ------------------------------------------------------------
    gs, ps = sides["gomail"], sides["postfix"]
    print()
    if e2e:
        print(f"End-to-end relay: smtp-source -s {params['sessions']} -m {params['messages']} -l {params['size']} "
              f"({params['connection_mode']}) -> server -> smtp-sink, {params['rounds']} round(s), "
              f"alternating gomail/postfix; gomail workerCount={params.get('workers')}")
    else:
        work = "both delivering into local Maildirs" if local else "both relaying to smtp-sink"
        print(f"Intake: smtp-source -s {params['sessions']} -m {params['messages']} -l {params['size']} "
              f"({params['connection_mode']}), {work}, {params['rounds']} round(s), alternating gomail/postfix")
    print(f"machine: {params['cpus']} CPUs, load average at start {params['loadavg_start']}")
    if params.get("gomail_env_overrides"):
        print(f"gomail configuration overridden from the environment: {params['gomail_env_overrides']}")
    print()
    def values(entry: dict, key: str, digits: int = 0) -> str:
        return ", ".join(f"{v:.{digits}f}" for v in entry[key].get("values", []))

    rows = [("", "gomail", "postfix")]
    if e2e:
        rows += [
            ("end-to-end msg/s median (min–max)", fmt_spread(gs["e2e_msgs_per_s"]), fmt_spread(ps["e2e_msgs_per_s"])),
            ("per-run end-to-end msg/s", values(gs, "e2e_msgs_per_s"), values(ps, "e2e_msgs_per_s")),
            ("per-run end-to-end s", values(gs, "e2e_s", 2), values(ps, "e2e_s", 2)),
            ("sink done after smtp-source exit, s", fmt_spread(gs["sink_lag_s"], 2), fmt_spread(ps["sink_lag_s"], 2)),
        ]
    rows += [
        ("intake msg/s median (min–max)" if e2e else "msg/s median (min–max)",
         fmt_spread(gs["msgs_per_s"]), fmt_spread(ps["msgs_per_s"])),
        ("runs", str(gs["runs"]), str(ps["runs"])),
        ("per-run intake msg/s" if e2e else "per-run msg/s", values(gs, "msgs_per_s"), values(ps, "msgs_per_s")),
        ("accepted per run", ", ".join(map(str, gs["accepted"])), ", ".join(map(str, ps["accepted"]))),
        ("delivered per run", ", ".join(map(str, gs["delivered"])), ", ".join(map(str, ps["delivered"]))),
        ("", "(maildir files)" if local else "(smtp-sink count)", "(maildir files)" if local else "(smtp-sink count)"),
    ]
    if e2e:
        rows += [
            ("gomail: relay 2xx logged / deferrals", ", ".join(map(str, gs["delivered_logged"])) + " / "
             + ", ".join(map(str, gs["deferred_logged"])), ""),
            ("gomail: left in queue / failed store", ", ".join(map(str, gs["still_queued"])) + " / "
             + ", ".join(map(str, gs["failed_store"])), ""),
        ]
    rows += [
        ("done after load, s" if e2e else "drain after load, s",
         fmt_spread(gs["drain_wait_s"], 1), fmt_spread(ps["drain_wait_s"], 1)),
        ("server CPU ms/msg, intake window", fmt_spread(gs["cpu_ms_per_msg_intake"], 2),
         fmt_spread(ps["cpu_ms_per_msg_intake"], 2)),
        ("  of which user / system", fmt_spread(gs["cpu_user_ms_per_msg_intake"], 2) + " / "
         + fmt_spread(gs["cpu_sys_ms_per_msg_intake"], 2), fmt_spread(ps["cpu_user_ms_per_msg_intake"], 2) + " / "
         + fmt_spread(ps["cpu_sys_ms_per_msg_intake"], 2)),
        # (Postfix: not counted, its daemons' switches leave with them)
        ("server context switches/msg, window", fmt_spread(gs["context_switches_per_msg_intake"]), "n/a"),
        ("server CPU ms/msg, incl. delivery", fmt_spread(gs["cpu_ms_per_msg_total"], 2),
         fmt_spread(ps["cpu_ms_per_msg_total"], 2)),
        ("server CPU ns/payload byte, incl. delivery", fmt_spread(gs["cpu_ns_per_byte_total"], 1),
         fmt_spread(ps["cpu_ns_per_byte_total"], 1)),
        ("server CPU busy % in window", fmt_spread(gs["cpu_busy_pct_intake"]), fmt_spread(ps["cpu_busy_pct_intake"])),
        ("machine CPU busy % in window", fmt_spread(gs["machine_busy_pct"]), fmt_spread(ps["machine_busy_pct"])),
        ("  of which steal (hypervisor) %", fmt_spread(gs["machine_steal_pct"]), fmt_spread(ps["machine_steal_pct"])),
        ("smtp-source output lines", ", ".join(map(str, gs["loadgen_output_lines"])),
         ", ".join(map(str, ps["loadgen_output_lines"]))),
    ]
    width = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    for name, a, b in rows:
        print(f"  {name:<{width}}  {a:<{w1}}  {b}")
    print()
    if e2e:
        print(f"  ratio gomail/postfix end-to-end (medians): {e2e_ratio:.2f}" if e2e_ratio is not None
              else "  ratio end-to-end: n/a")
        print(f"  ratio gomail/postfix intake (medians): {intake_ratio:.2f}" if intake_ratio is not None
              else "  ratio intake: n/a")
    else:
        print(f"  ratio gomail/postfix (medians): {ratio:.2f}" if ratio is not None else "  ratio: n/a")
    cpu_ratio = median_ratio("cpu_ms_per_msg_total")
    if cpu_ratio is not None:
        print(f"  server CPU per message, gomail/postfix (medians, incl. delivery): {cpu_ratio:.2f}")

    # -- the source the gomail runs imported -------------------------------------------
    sources = [r.get("gomail_source") for r in runs if r["side"] == "gomail" and r.get("gomail_source")]
    if sources:
        if len({s["sha256"] for s in sources}) > 1:
            print("\n  WARNING: the gomail source changed during the benchmark (shared working tree?):")
            for r in runs:
                if r["side"] == "gomail" and r.get("gomail_source"):
                    src = r["gomail_source"]
                    print(f"    round {r['round']}: source {src['sha256']}, uncommitted: {' '.join(src['uncommitted']) or 'none'}")
        elif sources[0]["uncommitted"]:
            print(f"\n  note: gomail ran with uncommitted changes on {sources[0]['commit']}: "
                  + "; ".join(sources[0]["uncommitted"]))
        else:
            print(f"\n  gomail source: commit {sources[0]['commit']}, no uncommitted changes (same in every round)")

    # -- problems ---------------------------------------------------------------
    for run in runs:
        side, n = run["side"], run["round"]
        out = run["load"]["loadgen_output_first"]
        if out or run["load"]["rc"]:
            print(f"\n  {side} round {n}: smtp-source exit {run['load']['rc']}, "
                  f"{run['load']['loadgen_output_lines']} output lines, first ones:")
            for line in out[:10]:
                print(f"    {line}")
        problems = run["drain"]["problems"]
        if problems.get("groups") or problems.get("tracebacks"):
            print(f"\n  {side} round {n}: server log warnings/errors"
                  + (f", {problems['tracebacks']} tracebacks" if problems.get("tracebacks") else "") + ":")
            for g in problems["groups"][:8]:
                print(f"    {g['count']:>6} x {g['example'][:220]}")
        drain = {k: v for k, v in run["drain"].items() if k not in ("problems", "sink_timeline")}
        if run["drain"].get("drain_incomplete"):
            print(f"\n  {side} round {n}: queue did not drain within the limit: {drain}")
        elif e2e and not run.get("e2e_msgs_per_s"):
            print(f"\n  {side} round {n}: not every accepted message reached smtp-sink: {drain}")
        elif drain["delivered"] < drain["accepted"] or drain.get("still_queued") or drain.get("failed_store"):
            print(f"\n  {side} round {n}: messages lost or left behind: {drain}")
        elif e2e and drain["delivered"] > drain["accepted"]:
            print(f"\n  {side} round {n}: smtp-sink received {drain['delivered'] - drain['accepted']} "
                  f"more messages than were accepted (duplicates)")
    print(f"\nJSON: {args.out}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)

    sub.add_parser("freeport").set_defaults(func=cmd_freeport)

    p = sub.add_parser("wait-log")
    p.add_argument("file")
    p.add_argument("text")
    p.add_argument("--pid", type=int, default=0)
    p.add_argument("--timeout", type=float, default=30)
    p.set_defaults(func=cmd_wait_log)

    p = sub.add_parser("wait-port")
    p.add_argument("port", type=int)
    p.add_argument("--timeout", type=float, default=30)
    p.set_defaults(func=cmd_wait_port)

    p = sub.add_parser("srcstate")
    p.add_argument("repo")
    p.add_argument("dirs", nargs="+")
    p.set_defaults(func=cmd_srcstate)

    p = sub.add_parser("load")
    p.add_argument("--out", required=True)
    p.add_argument("--output-file", required=True, help="where the load generator's stdout+stderr go")
    p.add_argument("--server-pid", type=int, default=0)
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_load)

    p = sub.add_parser("drain")
    p.add_argument("--kind", choices=("gomail", "postfix"), required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--maildir", default="")
    p.add_argument("--queue-dir", default="")
    p.add_argument("--sink-out", default="")
    p.add_argument("--expected-sessions", type=int, default=0)
    p.add_argument("--server-pid", type=int, default=0)
    p.add_argument("--load-json", required=True, help="the 'load' subcommand's output for this run")
    p.add_argument("--round", type=int, required=True)
    p.add_argument("--source-json", default="", help="the 'srcstate' output taken when the server started")
    p.add_argument("--timeout", type=float, default=300, help="bound on the wait after the load")
    p.add_argument("--stall", type=float, default=90)
    p.add_argument("--poll", type=float, default=0.2, help="seconds between samples")
    p.add_argument("--failed-dir", default="", help="gomail's failed store (counted at the end)")
    p.add_argument("--e2e", action="store_true",
                   help="end-to-end: time until smtp-sink has every accepted message (needs --sink-out)")
    p.add_argument("--load-pid", type=int, default=0,
                   help="run alongside this load process: sample the sink until --load-json appears")
    p.add_argument("--load-timeout", type=float, default=3600)
    p.set_defaults(func=cmd_drain)

    p = sub.add_parser("summarize")
    p.add_argument("--runs", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--params", required=True, help="JSON object with the run parameters")
    p.set_defaults(func=cmd_summarize)

    args = parser.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
