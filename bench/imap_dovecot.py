"""
IMAP against Dovecot (issue 21): logins per second, and FETCH of 1,000 x 5 KB
messages over one connection, gomail and a private Dovecot over copies of
the same Maildir, in the same run, rounds alternating (ABBA).

    .venv/bin/python bench/imap_dovecot.py                    # 3 rounds a side
    .venv/bin/python bench/imap_dovecot.py -r 1 -d 3 -f 3     # quick check

Starts, on free 127.0.0.1 ports: gomail (`twistd -n gomail`, IMAP only
besides SMTP; `[imap] allowPlaintextLoopback = true`) and Dovecot (Debian's
`dovecot-imapd`, `dovecot -F -c <temp>/dovecot.conf`: its own base_dir,
`ssl = no`, `disable_plaintext_auth = no`, `mail_location = maildir:<dir>/%u`,
a passwd-file passdb/userdb, the login services as Debian ships them). Both
are asked in plaintext (no STARTTLS on either side). One user, one password:
the same bcrypt hash (cost 10) in gomail's user database and in Dovecot's
passwd-file (`{BLF-CRYPT}`); both cache a verified login (gomail's auth
cache; Dovecot's `auth_cache_size = 10M`), so only the warm-up login pays
bcrypt.

The messages: `-m` (1,000) files of `-l` (5,120) bytes, CRLF line endings,
written once into the user's Maildir `cur/` (as read-and-kept mail is) and
copied to the other server's Maildir (gomail:
`<spool>/mailbox/<user>/cur/`, Dovecot: `<dir>/<user>/cur/`, owned by
`nobody`, as Dovecot refuses mail access as root). A warm-up SELECT + FETCH
on each builds their UID lists and indexes before anything is timed.

Measured per round and side:
  - logins/s: `-c` client processes (imaplib), each connecting, LOGIN,
    LOGOUT, over and over for `-d` seconds;
  - FETCH: one connection, LOGIN, SELECT INBOX, then `-f` times
    `FETCH 1:* (BODY.PEEK[])` read from a raw socket (the client only counts
    bytes and finds the tagged OK, so the client's own parsing does not
    weigh); messages/s and MB/s over the `-f` fetches;
  - the server's CPU (its whole process tree, from /proc) per login and per
    message fetched.
`--py-spy FILE` samples gomail (py-spy, collapsed stacks, without stopping
it: a sampler that pauses the process 200 times a second measured itself,
114 msg/s instead of 3,500) during its FETCHes; `--profile FILE` runs gomail
under `twistd --profile FILE --profiler cprofile --savestats` (the reactor
thread, the whole run; read it with pstats; the profiler slows gomail 2-3x).
"""

from __future__ import annotations

import argparse
import grp
import imaplib
import multiprocessing
import os
import pwd
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
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)
from intake_helper import process_tree

from gomail.auth import userdb
from gomail.auth.passwords import hash_password
from gomail.spool.jobs.maildirjobs import mailbox_name

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
USER, PASSWORD = "alice@example.org", "alice password"

GOMAIL_CONFIG = """
dataDir = "{data}"
smtpPort = {smtp}
enableHealthCheck = false
[spool]
directory = "{spool}"
minFreeSpaceMB = 0
[auth]
bcryptRounds = 10
[nginxAuth]
enabled = false
[admin]
enabled = false
[pop3]
enabled = false
[imap]
listen = ["tcp:{imap}:interface=127.0.0.1"]
allowPlaintextLoopback = true
"""

DOVECOT_CONFIG = """
base_dir = {work}/run
state_dir = {work}/state
instance_name = gomail-bench-{port}
protocols = imap
listen = 127.0.0.1
log_path = {work}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_cache_size = 10M
auth_cache_ttl = 1 hour
mail_location = maildir:{mail}/%u
first_valid_uid = 1
default_internal_user = dovecot
default_login_user = dovenull
passdb {{
  driver = passwd-file
  args = {work}/users
}}
userdb {{
  driver = passwd-file
  args = {work}/users
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def wait_for(port: int, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {seconds} s")


def message(index: int, size: int) -> bytes:
    """A plain text message of exactly C{size} bytes, CRLF line endings."""
    header = (f"From: Sender {index} <sender{index}@example.net>\r\nTo: {USER}\r\n"
              f"Subject: benchmark message {index}\r\nDate: Fri, 04 Dec 2026 10:00:00 +0000\r\n"
              f"Message-ID: <{index}.bench@example.net>\r\nMIME-Version: 1.0\r\n"
              f"Content-Type: text/plain; charset=us-ascii\r\n\r\n").encode()
    line = b"The quick brown fox jumps over the lazy dog, message body text. 0123456789\r\n"
    body = (line * (size // len(line) + 1))[:size - len(header) - 2] + b"\r\n"
    return header + body


def fill(cur: str, count: int, size: int) -> None:
    os.makedirs(cur)
    for sub in ("new", "tmp"):
        os.makedirs(os.path.join(os.path.dirname(cur), sub))
    for i in range(count):
        with open(os.path.join(cur, f"{1764842400 + i}.M{i}P1.bench:2,"), "wb") as f:
            f.write(message(i, size))


def login_client(port: int, seconds: float) -> tuple[int, int]:
    """One client process: connect, LOGIN, LOGOUT until the time is up; (logins, failures)."""
    deadline = time.monotonic() + seconds
    done = failed = 0
    while time.monotonic() < deadline:
        try:
            connection = imaplib.IMAP4("127.0.0.1", port, timeout=20)
            connection.login(USER, PASSWORD)
            connection.logout()
            done += 1
        except (OSError, imaplib.IMAP4.error):
            failed += 1
    return done, failed


class RawIMAP:
    """A minimal IMAP client on a socket: commands out, bytes in until the tagged answer."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.tags = 0
        self.read_until(b"\r\n")

    def read_until(self, end: bytes) -> bytes:
        chunks: list[bytes] = []
        tail = b"\r\n"  # a tagged answer may be the first line read
        while True:
            data = self.sock.recv(1 << 20)
            if not data:
                raise SystemExit("the server closed the connection")
            chunks.append(data)
            tail = (tail + data)[-4096:]
            if end in tail and tail.endswith(b"\r\n"):
                return b"".join(chunks)

    def command(self, text: str) -> bytes:
        self.tags += 1
        tag = f"BENCH{self.tags:04d}"
        self.sock.sendall(f"{tag} {text}\r\n".encode())
        answer = self.read_until(b"\r\n" + tag.encode() + b" ")
        status = answer[answer.rfind(tag.encode()):].split(b" ", 2)[1]
        if status != b"OK":
            raise SystemExit(f"{text.split()[0]} answered {answer[-200:]!r}")
        return answer

    def close(self) -> None:
        self.command("LOGOUT")
        self.sock.close()


def fetch_round(port: int, fetches: int, expected: int) -> tuple[float, int]:
    """C{fetches} times FETCH 1:* (BODY.PEEK[]) on one connection; (seconds, bytes received)."""
    client = RawIMAP(port)
    client.command(f'LOGIN "{USER}" "{PASSWORD}"')
    client.command("SELECT INBOX")
    received = 0
    started = time.monotonic()
    for _ in range(fetches):
        answer = client.command("FETCH 1:* (BODY.PEEK[])")
        received += len(answer)
        if answer.count(b" FETCH (") < expected:
            raise SystemExit(f"FETCH gave {answer.count(b' FETCH (')} messages, not {expected}")
    elapsed = time.monotonic() - started
    client.close()
    return elapsed, received


class Server:
    """One side: its name, port, the pid whose process tree is its CPU, and the figures of its rounds."""

    def __init__(self, name: str, port: int, process: Any) -> None:
        self.name, self.port, self.process = name, port, process
        self.logins: list[float] = []
        self.login_cpu: list[float] = []
        self.messages: list[float] = []
        self.megabytes: list[float] = []
        self.fetch_cpu: list[float] = []

    def cpu(self) -> float:
        """CPU seconds of the process tree, counting the children that ended (Dovecot's per-connection ones)."""
        total = 0
        for pid in process_tree(self.process.pid):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
        return total / os.sysconf("SC_CLK_TCK")


def run_round(server: Server, options: argparse.Namespace, pool: Any) -> None:
    before = server.cpu()
    started = time.monotonic()
    results = pool.starmap(login_client, [(server.port, options.duration)] * options.clients)
    elapsed = time.monotonic() - started
    logins = sum(done for done, _ in results)
    failures = sum(failed for _, failed in results)
    cpu = server.cpu() - before
    rate = logins / elapsed
    server.logins.append(rate)
    server.login_cpu.append(cpu / max(logins, 1) * 1000)
    spy = None
    if options.py_spy and server.name == "gomail":
        py_spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
        spy = subprocess.Popen([py_spy, "record", "-p", str(server.process.pid), "--nonblocking", "-f", "raw",
                                "-r", "200", "-o", os.path.abspath(options.py_spy)], stdout=subprocess.DEVNULL)
        time.sleep(1)  # py-spy attaches
    before = server.cpu()
    elapsed, received = fetch_round(server.port, options.fetches, options.messages)
    cpu = server.cpu() - before
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
    count = options.messages * options.fetches
    server.messages.append(count / elapsed)
    server.megabytes.append(received / elapsed / 1e6)
    server.fetch_cpu.append(cpu / count * 1e6)
    print(f"  {server.name:8} {rate:8,.0f} logins/s ({failures} failed, {server.login_cpu[-1]:.2f} ms "
          f"CPU a login)  FETCH {count / elapsed:8,.0f} msg/s {received / elapsed / 1e6:6.1f} MB/s "
          f"({server.fetch_cpu[-1]:.0f} us CPU a message)", flush=True)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def start_dovecot(work: str, port: int, source: str, password: str, log: Any) -> Any:
    base = os.path.join(work, "dovecot")
    mail = os.path.join(base, "mail")
    box = os.path.join(mail, USER)
    shutil.copytree(source, box)
    nobody, nogroup = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
    for directory, _, files in os.walk(mail):
        os.chown(directory, nobody, nogroup)
        for name in files:
            os.chown(os.path.join(directory, name), nobody, nogroup)
    with open(os.path.join(base, "users"), "w") as f:
        f.write(f"{USER}:{password}:{nobody}:{nogroup}::{box}::\n")
    config = os.path.join(base, "dovecot.conf")
    with open(config, "w") as f:
        f.write(DOVECOT_CONFIG.format(work=base, port=port, mail=mail))
    process = subprocess.Popen([DOVECOT, "-F", "-c", config], stdout=log, stderr=log)
    wait_for(port)
    return process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-r", "--rounds", type=int, default=3, help="rounds a side (alternating)")
    parser.add_argument("-d", "--duration", type=float, default=5.0, help="seconds of logins a round")
    parser.add_argument("-c", "--clients", type=int, default=4, help="login client processes")
    parser.add_argument("-f", "--fetches", type=int, default=5, help="FETCH 1:* a round")
    parser.add_argument("-m", "--messages", type=int, default=1000)
    parser.add_argument("-l", "--size", type=int, default=5120)
    parser.add_argument("--dovecot-scheme", default="BLF-CRYPT",
                        help="Dovecot's password scheme (default: gomail's bcrypt hash itself; e.g. SSHA512)")
    parser.add_argument("--py-spy", help="sample gomail's FETCHes with py-spy into this file (collapsed stacks)")
    parser.add_argument("--profile", help="run gomail under cProfile (twistd --profile), stats into this file")
    options = parser.parse_args()
    if not os.path.exists(DOVECOT):
        raise SystemExit("Dovecot is not installed (Debian: apt-get install dovecot-imapd)")
    work = tempfile.mkdtemp(prefix="gomail-imap-dovecot.")
    os.chmod(work, 0o755)  # Dovecot's auth process (user dovecot) reads its passwd-file in here
    smtp, gomail_port, dovecot_port = free_ports(3)
    data, spool = os.path.join(work, "data"), os.path.join(work, "spool")
    os.makedirs(data)
    password_hash = hash_password(PASSWORD, 10).decode()
    conn = userdb.open_connection(os.path.join(data, "gomail.db"))
    userdb.transact(conn, userdb.migrate)
    userdb.transact(conn, userdb.add_user, USER, password_hash.encode(), 0.0)
    conn.close()
    source = os.path.join(spool, "mailbox", mailbox_name(USER))
    fill(os.path.join(source, "cur"), options.messages, options.size)
    config = os.path.join(work, "gomail.toml")
    with open(config, "w") as f:
        f.write(GOMAIL_CONFIG.format(data=data, smtp=smtp, spool=spool, imap=gomail_port))
    python = sys.executable
    twistd = [os.path.join(os.path.dirname(python), "twistd")]
    log = open(os.path.join(work, "processes.log"), "wb")  # noqa: SIM115 - open for the processes' lives
    if options.profile:
        twistd += ["--profile", os.path.abspath(options.profile), "--profiler", "cprofile", "--savestats"]
    processes = [subprocess.Popen([*twistd, "-n", "--pidfile=", "gomail", "--config", config], cwd=work,
                                  stdout=log, stderr=log)]
    try:
        dovecot_password = "{BLF-CRYPT}" + password_hash
        if options.dovecot_scheme != "BLF-CRYPT":
            dovecot_password = subprocess.check_output(
                ["doveadm", "pw", "-s", options.dovecot_scheme, "-p", PASSWORD], text=True).strip()
        processes.append(start_dovecot(work, dovecot_port, source, dovecot_password, log))
        wait_for(gomail_port)
        servers = [Server("gomail", gomail_port, processes[0]), Server("Dovecot", dovecot_port, processes[1])]
        for server in servers:  # bcrypt once (then cached), UID lists and indexes built
            login_client(server.port, 0.01)
            fetch_round(server.port, 1, options.messages)
        print(f"{options.messages} x {options.size} B messages; {options.clients} login client processes x "
              f"{options.duration:g} s, then {options.fetches} x FETCH 1:* (BODY.PEEK[]) on one connection; "
              f"plaintext LOGIN on both; logs in {work}", flush=True)
        with multiprocessing.Pool(options.clients) as pool:
            for number in range(options.rounds):
                print(f"round {number + 1}", flush=True)
                for server in (servers if number % 2 == 0 else servers[::-1]):
                    run_round(server, options, pool)
        gomail, dovecot = servers
        print("medians (min-max):")
        for server in servers:
            print(f"  {server.name:8} logins/s {spread(server.logins)}, CPU ms a login "
                  f"{statistics.median(server.login_cpu):.2f}; FETCH msg/s {spread(server.messages)}, "
                  f"MB/s {statistics.median(server.megabytes):.1f}, CPU us a message "
                  f"{statistics.median(server.fetch_cpu):.0f}")
        print(f"ratio gomail / Dovecot: logins {statistics.median(gomail.logins) / statistics.median(dovecot.logins):.2f}, "
              f"FETCH {statistics.median(gomail.messages) / statistics.median(dovecot.messages):.2f} (target 0.5)")
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            process.wait(30)
        log.close()
        for mail in (os.path.join(spool, "mailbox"), os.path.join(work, "dovecot", "mail")):
            shutil.rmtree(mail, ignore_errors=True)  # the logs stay


if __name__ == "__main__":
    main()
