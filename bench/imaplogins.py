"""
Real IMAP logins per second through a real nginx mail proxy asking gomail's
auth_http: what an operator's users see (issue 16, part 3).

    .venv/bin/python bench/imaplogins.py                 # 3 rounds x 10 s, 8 client processes
    .venv/bin/python bench/imaplogins.py -r 1 -d 5 -c 4  # quick check

Starts, on free 127.0.0.1 ports: a fake IMAP backend (it accepts any LOGIN;
the same one the integration tests use), gomail (`twistd -n gomail`, auth_http
only: its user database has one user, bcrypt cost 10), and nginx with its
mail module (`auth_http` pointing at gomail, the shared secret set). Then
`-c` client processes each log in over and over with Python's imaplib
(connect, LOGIN, LOGOUT, a new connection every time) for `-d` seconds. The
first login of the run is the only one that costs bcrypt: the rest are
answered from gomail's auth cache, as an operator's busy users are.

Reports logins per second, the latency of a whole login (connect to LOGOUT
answered) at the median and p99, and gomail's CPU seconds per login (from
/proc). Needs nginx with the mail module (Debian: nginx-core libnginx-mod-mail).
"""

from __future__ import annotations

import argparse
import imaplib
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)  # gomail and the tests' fake backend, from this tree

from gomail.auth import userdb
from gomail.auth.passwords import hash_password

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
MAIL_MODULE = "/usr/lib/nginx/modules/ngx_mail_module.so"
SHARED = "bench-shared-key"
USER, PASSWORD = "alice@example.org", "alice password"

GOMAIL_CONFIG = """
smtpHost = "127.0.0.1"
smtpPort = {smtp}
dataDir = "{data}"
enableHealthCheck = true
[monitor]
listen = ["tcp:{monitor}:interface=127.0.0.1"]
[spool]
minFreeSpaceMB = 0
[auth]
bcryptRounds = 10
[nginxAuth]
listen = ["tcp:{auth}:interface=127.0.0.1"]
sharedSecret = "{shared}"
healthCheckInterval = 0
[[nginxAuth.backends]]
protocol = "imap"
address = "127.0.0.1"
port = {backend}
"""

NGINX_CONFIG = """
load_module {module};
daemon off;
master_process off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
mail {{
    server_name mail.test;
    auth_http 127.0.0.1:{auth}/api/auth;
    auth_http_header X-Auth-Key "{shared}";
    server {{ listen 127.0.0.1:{imap}; protocol imap; }}
}}
"""

BACKEND = """
import sys
from twisted.internet import reactor
from twisted.internet.protocol import Factory
from tests.test_nginx_integration import FakeIMAPBackend

class Forget:
    def append(self, login):  # the tests' backend records logins; this one runs too long for that
        pass

factory = Factory.forProtocol(FakeIMAPBackend)
factory.logins = Forget()
reactor.listenTCP(int(sys.argv[1]), factory, interface="127.0.0.1", backlog=1024)
reactor.run()
"""


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def wait_for(port: int, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {seconds} s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children that ended (from /proc), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def client(arguments: tuple[int, float]) -> tuple[int, int, list[float]]:
    """One client process: log in and out until the time is up; (logins, failures, latencies)."""
    port, seconds = arguments
    deadline = time.monotonic() + seconds
    done, failed, latencies = 0, 0, []
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            connection = imaplib.IMAP4("127.0.0.1", port, timeout=20)
            connection.login(USER, PASSWORD)
            connection.logout()
            done += 1
            latencies.append(time.monotonic() - started)
        except (OSError, imaplib.IMAP4.error):
            failed += 1
    return done, failed, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-r", "--rounds", type=int, default=3)
    parser.add_argument("-d", "--duration", type=float, default=10.0)
    parser.add_argument("-c", "--clients", type=int, default=8)
    options = parser.parse_args()
    if not os.path.exists(MAIL_MODULE):
        raise SystemExit("nginx's mail module is not installed (Debian: nginx-core libnginx-mod-mail)")
    work = tempfile.mkdtemp(prefix="gomail-imaplogins.")
    smtp, auth, monitor, backend, imap = free_ports(5)
    data = os.path.join(work, "data")
    os.makedirs(data)
    conn = userdb.open_connection(os.path.join(data, "gomail.db"))
    userdb.transact(conn, userdb.migrate)
    userdb.transact(conn, userdb.add_user, USER, hash_password(PASSWORD, 10), 0.0)
    conn.close()
    config = os.path.join(work, "gomail.toml")
    with open(config, "w") as f:
        f.write(GOMAIL_CONFIG.format(smtp=smtp, data=data, monitor=monitor, auth=auth, shared=SHARED,
                                     backend=backend))
    prefix = os.path.join(work, "nginx")
    os.makedirs(prefix)
    with open(os.path.join(prefix, "nginx.conf"), "w") as f:
        f.write(NGINX_CONFIG.format(module=MAIL_MODULE, prefix=prefix, auth=auth, shared=SHARED, imap=imap))
    python = sys.executable
    twistd = os.path.join(os.path.dirname(python), "twistd")
    log = open(os.path.join(work, "processes.log"), "wb")  # noqa: SIM115 - open for the processes' lives
    processes = [
        subprocess.Popen([python, "-c", BACKEND, str(backend)], cwd=REPO, stdout=log, stderr=log),
        gomail := subprocess.Popen([twistd, "-n", "--pidfile=", "gomail", "--config", config], cwd=work,
                                   stdout=log, stderr=log),
    ]
    try:
        wait_for(backend)
        wait_for(auth)
        processes.append(subprocess.Popen([NGINX, "-p", prefix, "-e", os.path.join(prefix, "error.log"),
                                           "-c", os.path.join(prefix, "nginx.conf")], stdout=log, stderr=log))
        wait_for(imap)
        client((imap, 0.5))  # the one bcrypt login; the rest come from the auth cache
        print(f"{options.clients} imaplib client processes, {options.duration:g} s a round, "
              f"a new connection per login, cached credentials; logs in {work}")
        rates = []
        with multiprocessing.Pool(options.clients) as pool:
            for round_number in range(1, options.rounds + 1):
                cpu_before = cpu_seconds(gomail.pid)
                started = time.monotonic()
                results = pool.map(client, [(imap, options.duration)] * options.clients)
                elapsed = time.monotonic() - started
                cpu = cpu_seconds(gomail.pid) - cpu_before
                logins = sum(done for done, _, _ in results)
                failures = sum(failed for _, failed, _ in results)
                latencies = sorted(latency for _, _, values in results for latency in values)
                rate = logins / elapsed
                rates.append(rate)
                p99 = latencies[int(len(latencies) * 0.99)] if latencies else float("nan")
                print(f"round {round_number}: {rate:,.0f} logins/s, {failures} failed, login "
                      f"median {statistics.median(latencies) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
                      f"gomail CPU {cpu / max(logins, 1) * 1000:.2f} ms per login")
        print(f"median of {len(rates)} rounds: {statistics.median(rates):,.0f} logins/s")
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            process.wait(30)
        log.close()


if __name__ == "__main__":
    main()
