"""
Direct delivery (issue 19's benchmark, gomail's side): N messages to D
domains, each domain's MX found through a local DNS server (twisted.names,
``bench/direct_dns.py``) and an ``smtp-sink`` on 127.0.0.3 taking them all;
timed from the first message injected (``smtp-source``, S parallel sessions)
until the sink has every message. Alternates DKIM off and on (RSA 2048,
relaxed/relaxed) and reports msg/s and gomail's CPU per message.

    python3 bench/direct.py [-m 10000] [-d 100] [-s 20] [-l 5120] [-r 2]

Postfix does the same (no DKIM: opendkim is not set up) in a private
instance whose smtp(8) runs chrooted in its queue directory, where
etc/resolv.conf names the benchmark's DNS server: so the DNS server listens
on 127.0.0.1:53 and the sink on 127.0.0.3:25 (root), for both servers.
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


POSTFIX_MAIN = """
# private benchmark instance written by bench/direct.py; /etc/postfix is not used
compatibility_level = 3.6
queue_directory = {dir}/queue
data_directory = {dir}/data
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix-bench.localdomain
inet_interfaces = loopback-only
inet_protocols = ipv4
mydestination =
relayhost =
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
maillog_file = {dir}/maillog
maillog_file_prefixes = {dir}
smtp_dns_support_level = enabled
"""
# Debian's services, chroot off except smtp(8): chrooted in the queue directory, it reads the
# queue directory's etc/resolv.conf, which names the benchmark's DNS server.
POSTFIX_MASTER = """
127.0.0.1:{port} inet n  -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       y       -       -       smtp
relay     unix  -       -       y       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class Shared:
    """What both servers deliver through: the DNS server on 127.0.0.1:53 and smtp-sink on 127.0.0.3:25."""

    def __init__(self, args: argparse.Namespace, work: str, files: contextlib.ExitStack) -> None:
        self.files, self.work = files, work
        self.dns_log = os.path.join(work, "dns.log")
        self.dns = subprocess.Popen([sys.executable, os.path.join(HERE, "direct_dns.py"), "53", str(args.domains)],
                                    stdout=self.output(self.dns_log), stderr=subprocess.STDOUT)
        wait_for(self.dns_log, "dns ready")
        self.sink: Any = None

    def output(self, path: str) -> Any:
        """A log file for a child process, closed with the benchmark."""
        return self.files.enter_context(open(path, "w"))

    def start_sink(self, name: str) -> str:
        log = os.path.join(self.work, f"sink-{name}.log")
        self.sink = subprocess.Popen(["smtp-sink", "-c", "-u", "nobody", "127.0.0.3:25", "1000"],
                                     stdout=self.output(log), stderr=subprocess.STDOUT)
        time.sleep(0.3)  # smtp-sink prints nothing when it listens
        return log

    def stop_sink(self) -> None:
        stop(self.sink)

    def close(self) -> None:
        stop(self.dns)


def stop(process: Any) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()


def inject_and_time(args: argparse.Namespace, port: int, sink_log: str, pids: Any) -> tuple[float, float, int]:
    """smtp-source sessions, one domain each, until every message is at the sink: (seconds, CPU s, messages)."""
    cpu_before = sum(proc_cpu_seconds(p) or 0 for p in pids())
    started = time.monotonic()
    per_domain = args.messages // args.domains
    sources: list[Any] = []
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
        if time.monotonic() - started > 900:
            raise SystemExit(f"only {sink_count(sink_log)} of {total} reached the sink")
        time.sleep(0.05)
    elapsed = time.monotonic() - started
    return elapsed, sum(proc_cpu_seconds(p) or 0 for p in pids()) - cpu_before, total


def run_gomail(args: argparse.Namespace, dkim: bool, shared: Shared) -> dict:
    data = tempfile.mkdtemp(dir=shared.work)
    port = free_port()
    sink_log = shared.start_sink(f"gomail-{len(os.listdir(shared.work))}")  # stopped in the finally below
    key = os.path.join(shared.work, "keys", "gomail.bench", "mail.private")
    config = os.path.join(data, "gomail.toml")
    with open(config, "w") as f:
        f.write(CONFIG.format(data=data, port=port, dns=53, sink=25, dkim=str(dkim).lower(), key=key))
    log = os.path.join(data, "gomail.log")
    twistd = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
    gomail = subprocess.Popen([sys.executable, "-c", twistd, "-n", "--pidfile=", "gomail", "--config", config],
                              stdout=shared.output(log), stderr=subprocess.STDOUT, cwd=data,
                              env={**os.environ, "PYTHONPATH": ROOT})
    try:
        wait_for(log, "gomail ready")
        elapsed, cpu, total = inject_and_time(args, port, sink_log, lambda: process_tree(gomail.pid))
        return {"server": "gomail" + (" dkim" if dkim else ""), "msg_s": total / elapsed,
                "cpu_ms": 1000 * cpu / total, "messages": total}
    finally:
        stop(gomail)
        shared.stop_sink()
        if os.environ.get("KEEP") is None:
            shutil.rmtree(data, ignore_errors=True)


def run_postfix(args: argparse.Namespace, shared: Shared) -> dict:
    directory = tempfile.mkdtemp(dir=shared.work)
    conf = os.path.join(directory, "conf")
    port = free_port()
    sink_log = shared.start_sink(f"postfix-{len(os.listdir(shared.work))}")
    try:
        setup_postfix(directory, port, shared.work)
        for action in ("check", "start"):
            done = subprocess.run(["postfix", "-c", conf, action], capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"postfix {action} failed: {done.stderr.strip()[-500:]} "
                                 f"{read(directory + '/maillog')[-500:]}")
        pid_file = os.path.join(directory, "queue", "pid", "master.pid")
        wait_for(pid_file, "")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        master = int(read(pid_file).split()[0])
        elapsed, cpu, total = inject_and_time(args, port, sink_log, lambda: process_tree(master))
        return {"server": "postfix", "msg_s": total / elapsed, "cpu_ms": 1000 * cpu / total, "messages": total}
    finally:
        subprocess.run(["postfix", "-c", conf, "stop"], capture_output=True)
        shared.stop_sink()
        if os.environ.get("KEEP") is None:
            shutil.rmtree(directory, ignore_errors=True)


def setup_postfix(directory: str, port: int, work: str) -> None:
    """A private instance: main.cf, master.cf, and the chrooted smtp(8)'s etc/ naming the benchmark's DNS."""
    os.chmod(directory, 0o755)
    for sub in ("conf", "data", "queue/etc"):
        os.makedirs(os.path.join(directory, sub), exist_ok=True)
    # Postfix's daemons (user postfix) must reach their queue; its data directory is theirs.
    os.chmod(work, 0o755)
    os.chmod(os.path.join(directory, "queue"), 0o755)
    shutil.chown(os.path.join(directory, "data"), "postfix")
    with open(os.path.join(directory, "conf", "main.cf"), "w") as f:
        f.write(POSTFIX_MAIN.format(dir=directory))
    with open(os.path.join(directory, "conf", "master.cf"), "w") as f:
        f.write(POSTFIX_MASTER.format(port=port))
    with open(os.path.join(directory, "queue", "etc", "resolv.conf"), "w") as f:
        f.write("nameserver 127.0.0.1\n")
    for name in ("services", "hosts", "nsswitch.conf", "host.conf"):
        if os.path.exists(f"/etc/{name}"):
            shutil.copy(f"/etc/{name}", os.path.join(directory, "queue", "etc", name))


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
    with contextlib.ExitStack() as files:
        shared = Shared(args, work, files)
        try:
            for number in range(args.rounds):
                for side in ("gomail", "postfix", "gomail dkim"):
                    if side == "postfix":
                        result = run_postfix(args, shared)
                    else:
                        result = run_gomail(args, side.endswith("dkim"), shared)
                    results.append(result)
                    print(f"round {number + 1} {side}: {result['msg_s']:.0f} msg/s, {result['cpu_ms']:.2f} ms CPU/msg "
                          f"({result['messages']} messages)", flush=True)
        finally:
            shared.close()
    medians = {}
    for side in ("gomail", "postfix", "gomail dkim"):
        rates = [r["msg_s"] for r in results if r["server"] == side]
        cpu = [r["cpu_ms"] for r in results if r["server"] == side]
        medians[side] = statistics.median(rates)
        print(f"{side}: median {medians[side]:.0f} msg/s ({min(rates):.0f}-{max(rates):.0f}), "
              f"{statistics.median(cpu):.2f} ms CPU/msg")
    print(f"ratio gomail / postfix: {medians['gomail'] / medians['postfix']:.2f}; "
          f"gomail with DKIM / postfix without: {medians['gomail dkim'] / medians['postfix']:.2f}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
