"""
Direct delivery (issue 19's benchmark, gomail's side): N messages to D
domains, each domain's MX found through a local DNS server (twisted.names,
``bench/direct_dns.py``) and an ``smtp-sink`` on 127.0.0.3 taking them all;
timed from the first message injected (``smtp-source``, S parallel sessions)
until the sink has every message. Alternates DKIM off and on (RSA 2048,
relaxed/relaxed) and reports msg/s and gomail's CPU per message.

    python3 bench/direct.py [-m 10000] [-d 100] [-s 20] [-l 5120] [-r 2]

The Postfix side of the issue's comparison is not here: Postfix resolves
MX through the system resolver (port 53 of /etc/resolv.conf's servers), so
pointing it at a test DNS server needs the machine's resolver changed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from intake_helper import proc_cpu_seconds, process_tree

CONFIG = """
dataDir = "{data}"
smtpPort = {port}
workerCount = 20
queueSize = 100000
enableHealthCheck = false
[security]
requireAuth = false
allowLocalOnly = true
[nginxAuth]
enabled = false
[smtp]
hostname = "mx.gomail.bench"
localDomains = ["gomail.bench"]
maxConnectionsPerIP = 1000
[rateLimits]
enabled = false
[directDelivery]
enabled = true
dnsServers = ["127.0.0.1:{dns}"]
port = {sink}
mtaSts = false
[dkim]
enabled = {dkim}
domain = "gomail.bench"
privateKeyPath = "{key}"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read(path: str) -> str:
    if not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        return f.read()


def wait_for(path: str, text: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if text in read(path):
            return
        time.sleep(0.1)
    raise SystemExit(f"{text!r} not in {path} within {timeout} s")


def sink_count(path: str) -> int:
    found = re.findall(r"mesg=(\d+)", read(path))
    return int(found[-1]) if found else 0


def run(args: argparse.Namespace, dkim: bool, work: str) -> dict:
    with contextlib.ExitStack() as files:
        return _run(args, dkim, work, lambda path: files.enter_context(open(path, "w")))


def _run(args: argparse.Namespace, dkim: bool, work: str, output: Any) -> dict:
    data = tempfile.mkdtemp(dir=work)
    dns_port, sink_port, port = free_port(), free_port(), free_port()
    sink_log = os.path.join(data, "sink.log")
    sink = subprocess.Popen(["smtp-sink", "-c", "-u", "nobody", f"127.0.0.3:{sink_port}", "1000"],
                            stdout=output(sink_log), stderr=subprocess.STDOUT)
    dns_log = os.path.join(data, "dns.log")
    dns = subprocess.Popen([sys.executable, os.path.join(HERE, "direct_dns.py"), str(dns_port), str(args.domains)],
                           stdout=output(dns_log), stderr=subprocess.STDOUT)
    key = os.path.join(work, "keys", "gomail.bench", "mail.private")
    config = os.path.join(data, "gomail.toml")
    with open(config, "w") as f:
        f.write(CONFIG.format(data=data, port=port, dns=dns_port, sink=sink_port, dkim=str(dkim).lower(), key=key))
    log = os.path.join(data, "gomail.log")
    twistd = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
    gomail = subprocess.Popen([sys.executable, "-c", twistd, "-n", "--pidfile=", "gomail", "--config", config], stdout=output(log), stderr=subprocess.STDOUT, cwd=data,
                              env={**os.environ, "PYTHONPATH": ROOT})
    try:
        wait_for(dns_log, "dns ready")
        wait_for(log, "gomail ready")
        cpu_before = sum(proc_cpu_seconds(p) or 0 for p in process_tree(gomail.pid))
        started = time.monotonic()
        per_domain = args.messages // args.domains
        sources = []
        pending = list(range(args.domains))
        while pending or sources:
            while pending and len(sources) < args.sessions:
                domain = pending.pop()
                sources.append(subprocess.Popen(
                    ["smtp-source", "-s", "1", "-m", str(per_domain), "-l", str(args.size), "-f",
                     "sender@gomail.bench", "-t", f"user@d{domain}.bench", f"127.0.0.1:{port}"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            sources = [s for s in sources if s.poll() is None]
            time.sleep(0.02)
        total = per_domain * args.domains
        while sink_count(sink_log) < total:
            if time.monotonic() - started > 600:
                raise SystemExit(f"only {sink_count(sink_log)} of {total} reached the sink")
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        cpu = sum(proc_cpu_seconds(p) or 0 for p in process_tree(gomail.pid)) - cpu_before
        return {"dkim": dkim, "msg_s": total / elapsed, "cpu_ms": 1000 * cpu / total, "messages": total}
    finally:
        for process in (gomail, dns, sink):
            process.send_signal(signal.SIGTERM)
        for process in (gomail, dns, sink):
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        if os.environ.get("KEEP") is None:
            shutil.rmtree(data, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", "--messages", type=int, default=10000)
    parser.add_argument("-d", "--domains", type=int, default=100)
    parser.add_argument("-s", "--sessions", type=int, default=20)
    parser.add_argument("-l", "--size", type=int, default=5120)
    parser.add_argument("-r", "--rounds", type=int, default=2)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="gomail-direct-bench-")
    subprocess.run([sys.executable, "-m", "gomail.cli", "dkim", "keygen", "gomail.bench", "--directory", work],
                   check=True, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": ROOT})
    results = []
    for number in range(args.rounds):
        for dkim in (False, True):
            result = run(args, dkim, work)
            results.append(result)
            print(f"round {number + 1} dkim={'on ' if dkim else 'off'}: {result['msg_s']:.0f} msg/s, "
                  f"{result['cpu_ms']:.2f} ms CPU/msg ({result['messages']} messages)", flush=True)
    for dkim in (False, True):
        rates = [r["msg_s"] for r in results if r["dkim"] == dkim]
        cpu = [r["cpu_ms"] for r in results if r["dkim"] == dkim]
        print(f"dkim {'on ' if dkim else 'off'}: median {statistics.median(rates):.0f} msg/s "
              f"({min(rates):.0f}-{max(rates):.0f}), {statistics.median(cpu):.2f} ms CPU/msg")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
