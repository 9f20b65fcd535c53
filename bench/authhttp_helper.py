"""
Helper of bench/authhttp.sh: free ports, the user database, the peer, bounded
waits, wrk runs with gomail's CPU and auth counters around them, wrk output
parsing, the py-spy summary and the summary table / JSON.

Standard library only, except C{users} (gomail) and C{peer} (Twisted): run it
with the venv's python.

  authhttp_helper.py freeports N
  authhttp_helper.py users --db PATH --user NAME --password PW --rounds N
  authhttp_helper.py peer --port PORT
  authhttp_helper.py wait-text FILE TEXT [--pid PID] [--timeout S]
  authhttp_helper.py run --out JSON [--pid PID] [--peer-pid PID] [--metrics URL] [--meta JSON]
                         -- NAME DELAY WRK ARGS... [::: NAME DELAY WRK ARGS...]
  authhttp_helper.py parse-wrk FILE
  authhttp_helper.py profile FILE [--top N]
  authhttp_helper.py summarize --runs DIR --params JSON --out FILE
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

# -- ports and waits ----------------------------------------------------------------


def freeports(n: int) -> list[int]:
    """N distinct free TCP ports of 127.0.0.1 (all held open while choosing, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_text(path: str, text: str, pid: int | None, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    needle = text.encode()
    while time.monotonic() < deadline:
        try:
            with open(path, "rb") as f:
                if needle in f.read():
                    return 0
        except FileNotFoundError:
            pass
        if pid is not None and not alive(pid):
            print(f"process {pid} exited before {text!r} appeared in {path}", file=sys.stderr)
            return 1
        time.sleep(0.05)
    print(f"{text!r} did not appear in {path} within {timeout} s", file=sys.stderr)
    return 1


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# -- the user database and the peer -------------------------------------------------------


def make_users(db: str, user: str, password: str, rounds: int) -> None:
    """One user with a known password, written before gomail starts (as tests/test_nginx_integration.py does)."""
    from gomail.auth import userdb
    from gomail.auth.passwords import hash_password

    os.makedirs(os.path.dirname(db), exist_ok=True)
    conn = userdb.open_connection(db)
    try:
        userdb.transact(conn, userdb.migrate)
        userdb.transact(conn, userdb.add_user, user, hash_password(password, rounds), 0.0)
    finally:
        conn.close()


def peer_site():
    """The peer: a bare twisted.web leaf resource answering nginx's success headers, in a Site."""
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    class AuthOK(Resource):
        isLeaf = True

        def render_GET(self, request):
            request.setHeader(b"Auth-Status", b"OK")
            request.setHeader(b"Auth-Server", b"127.0.0.1")
            request.setHeader(b"Auth-Port", b"143")
            return b""

    site = Site(AuthOK())
    site.log = lambda request: None  # no access log (gomail's LimitedSite has none either)
    return site


def klein_peer_site():
    """The second peer: a bare Klein route answering nginx's success headers, in a Site."""
    from klein import Klein
    from twisted.web.server import Site

    app = Klein()

    @app.route("/api/auth", methods=["GET", "HEAD"])
    def auth(request):
        request.setHeader(b"Auth-Status", b"OK")
        request.setHeader(b"Auth-Server", b"127.0.0.1")
        request.setHeader(b"Auth-Port", b"143")
        return b""

    site = Site(app.resource())
    site.log = lambda request: None
    return site


def run_peer(port: int, klein: bool = False) -> None:
    """The peer (L{peer_site}, or L{klein_peer_site}) listening on C{port}; one reactor."""
    from twisted.internet import reactor

    site = klein_peer_site() if klein else peer_site()
    reactor.listenTCP(port, site, interface="127.0.0.1")
    reactor.callWhenRunning(lambda: print(f"peer ready on 127.0.0.1:{port}", flush=True))
    reactor.run()


# -- /proc and /metrics ----------------------------------------------------------------


def cpu_seconds(pid: int | None) -> float | None:
    """utime + stime of a process (all its threads), in seconds."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_METRIC = re.compile(r'^(gomail_auth_[a-z_]+?)(?:_total)?(\{[^}]*\})?\s+([-+0-9.eE]+|NaN)\s*$')


def auth_counters(url: str | None) -> dict[str, float] | None:
    """gomail's auth counters from /metrics ({'attempts{protocol="imap",result="success"}': n, ...})."""
    if not url:
        return None
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
    except OSError as e:
        print(f"could not read {url}: {e}", file=sys.stderr)
        return None
    counters = {}
    for line in text.splitlines():
        m = _METRIC.match(line)
        if m and not m.group(1).endswith(("_created", "_bucket", "_sum", "_count", "_seconds", "_ratio")):
            counters[m.group(1)[len("gomail_auth_"):] + (m.group(2) or "")] = float(m.group(3))
    return counters


def delta(before: dict | None, after: dict | None) -> dict[str, float] | None:
    if before is None or after is None:
        return None
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


# -- wrk ---------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_TIME = r"([0-9.]+)(us|ms|s|m|h)\b"


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def parse_wrk(text: str) -> dict:
    """The figures of one `wrk --latency` output; latencies in ms whatever unit wrk chose."""
    out: dict = {"requests": None, "seconds": None, "rps": None, "latency_ms": {}, "non2xx": 0,
                 "socket_errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0}}
    m = re.search(r"^\s*Latency\s+" + _TIME + r"\s+" + _TIME + r"\s+" + _TIME, text, re.MULTILINE)
    if m:
        out["latency_ms"]["avg"] = _ms(m.group(1), m.group(2))
        out["latency_ms"]["max"] = _ms(m.group(5), m.group(6))
    for pct, value, unit in re.findall(r"^\s*(\d+(?:\.\d+)?)%\s+" + _TIME, text, re.MULTILINE):
        out["latency_ms"][f"p{float(pct):g}"] = _ms(value, unit)
    m = re.search(r"^\s*(\d+) requests in " + _TIME, text, re.MULTILINE)
    if m:
        out["requests"] = int(m.group(1))
        out["seconds"] = _ms(m.group(2), m.group(3)) / 1e3
    m = re.search(r"^Requests/sec:\s+([0-9.]+)", text, re.MULTILINE)
    if m:
        out["rps"] = float(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if m:
        out["non2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        out["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups())))
    out["errors"] = out["non2xx"] + sum(out["socket_errors"].values())
    return out


_children: list[subprocess.Popen] = []


def _stop_children(signum, frame):
    for p in _children:
        if p.poll() is None:
            p.terminate()
    for p in _children:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
    sys.exit(128 + signum)


def run(args) -> int:
    """Run one or more wrk commands (each after its delay, concurrently), with CPU and counters around them."""
    signal.signal(signal.SIGTERM, _stop_children)
    signal.signal(signal.SIGINT, _stop_children)
    specs, cur = [], []
    for token in args.commands + [":::"]:
        if token == ":::":
            if cur:
                specs.append((cur[0], float(cur[1]), cur[2:]))
            cur = []
        else:
            cur.append(token)
    base = os.path.splitext(args.out)[0]
    before = auth_counters(args.metrics)
    cpu0, peer0, wall0 = cpu_seconds(args.pid), cpu_seconds(args.peer_pid), time.monotonic()
    started = []
    for name, delay, cmd in sorted(specs, key=lambda s: s[1]):
        pause = wall0 + delay - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        f = open(f"{base}.{name}.wrk.txt", "w")  # noqa: SIM115 - wrk writes to it until it ends, closed below
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        _children.append(p)
        started.append((name, cmd, p, f))
    results, rc = {}, 0
    for name, cmd, p, f in started:
        bound = args.timeout
        try:
            p.wait(timeout=bound)
        except subprocess.TimeoutExpired:
            print(f"{name}: wrk still running after {bound} s: stopping it", file=sys.stderr)
            p.kill()
            p.wait()
        f.close()
        with open(f.name) as result_file:
            text = result_file.read()
        results[name] = {"cmd": " ".join(cmd), "rc": p.returncode, **parse_wrk(text)}
        if p.returncode != 0 or results[name]["rps"] is None:
            print(f"{name}: wrk failed (rc {p.returncode}):\n{text[-2000:]}", file=sys.stderr)
            rc = 1
    wall = time.monotonic() - wall0
    cpu1, peer1 = cpu_seconds(args.pid), cpu_seconds(args.peer_pid)
    record = {**json.loads(args.meta), "wall_s": wall, "wrk": results,
              "gomail_cpu_s": None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
              "peer_cpu_s": None if peer0 is None or peer1 is None else peer1 - peer0,
              "auth_counters": delta(before, auth_counters(args.metrics)),
              "loadavg_after": os.getloadavg()[0]}
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1)
    return rc


# -- py-spy ------------------------------------------------------------------------------


def profile(path: str, top: int) -> None:
    """Summarise py-spy's raw (collapsed) stacks: which threads are busy, and where the busiest one spends it."""
    stacks, threads, total = [], {}, 0
    with open(path) as stacks_file:
        lines = stacks_file.read().splitlines()
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = frames[0] if frames[0].startswith("thread") else "?"
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        n = int(count)
        total += n
        threads[thread] = threads.get(thread, 0) + n
        if frames:
            stacks.append((thread, frames, n))
    print(f"{total} samples of active (non-idle) threads")
    print("-- by thread")
    for name, n in sorted(threads.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{100 * n / total:5.1f}%  {name}")
    busiest = max(threads, key=threads.get) if threads else None
    for title, pick in ((f"self (leaf frame), {busiest}", busiest), ("self (leaf frame), all threads", None)):
        table, sub = {}, 0
        for thread, frames, n in stacks:
            if pick is None or thread == pick:
                table[frames[-1]] = table.get(frames[-1], 0) + n
                sub += n
        print(f"-- {title} ({sub} samples)")
        for name, n in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
            print(f"{100 * n / sub:5.1f}%  {name}")
    table, sub = {}, threads.get(busiest, 0)
    for thread, frames, n in stacks:
        if thread == busiest:
            for f in set(frames):
                table[f] = table.get(f, 0) + n
    print(f"-- inclusive, {busiest}")
    for name, n in sorted(table.items(), key=lambda kv: -kv[1])[:2 * top]:
        print(f"{100 * n / sub:5.1f}%  {name}")


# -- summary -------------------------------------------------------------------------------


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=None):
    if v is None:
        return "–"
    if digits is None:
        digits = 0 if abs(v) >= 100 else 1 if abs(v) >= 10 else 2
    return f"{v:,.{digits}f}"


def mmm(values, digits=None):
    """median (min–max) of the values."""
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return fmt(values[0], digits)
    return f"{fmt(med(values), digits)} ({fmt(min(values), digits)}–{fmt(max(values), digits)})"


def summarize(args) -> int:
    params = json.loads(args.params)
    runs = []
    for run_path in sorted(glob.glob(os.path.join(args.runs, "*.json"))):
        with open(run_path) as run_file:
            runs.append(json.load(run_file))
    problems = []

    def throughput(side, conns):
        return sorted((r for r in runs if r["kind"] == "throughput" and r["side"] == side and r["conns"] == conns),
                      key=lambda r: r["round"])

    def lat(rs, key):
        return [r["wrk"]["main"]["latency_ms"].get(key) for r in rs]

    print(f"\n# nginx auth_http: gomail /api/auth vs a bare twisted.web resource; {params['timestamp']}")
    print(f"# nproc {params['nproc']}, load average at start {params['loadavg_start']}; gomail {params['gomail_rev']}; "
          f"Twisted {params['twisted_version']}, bcrypt {params['bcrypt_version']}, {params['wrk_version']}")
    print(f"# {params['rounds']} rounds x {params['duration']} s per run, alternating; wrk -t2 --latency, "
          f"{'a new connection per request (as nginx)' if params.get('new_conn') else 'keep-alive connections'}; "
          f"bcrypt cost {params['bcrypt_rounds']}")
    if params.get("gomail_env"):
        print(f"# gomail environment overrides: {params['gomail_env']}")
    print()
    print("| figure | gomail `/api/auth` | peer (bare `twisted.web`) | ratio gomail/peer |")
    print("|---|---|---|---|")
    summary: dict = {}
    for conns in params["conns"]:
        g, p = throughput("gomail", conns), throughput("peer", conns)
        if not g or not p:
            continue
        grps, prps = [r["wrk"]["main"]["rps"] for r in g], [r["wrk"]["main"]["rps"] for r in p]
        pairs = {r["round"]: r["wrk"]["main"]["rps"] for r in p}
        per_round = [r["wrk"]["main"]["rps"] / pairs[r["round"]] for r in g if pairs.get(r["round"])]
        ratio = med(grps) / med(prps) if med(prps) else None
        rng = f" (per round {fmt(min(per_round))}–{fmt(max(per_round))})" if len(per_round) > 1 else ""
        print(f"| **req/s, -c{conns}** | **{mmm(grps)}** | {mmm(prps)} | **{fmt(ratio)}**{rng} |")
        for key in ("p50", "p99", "max"):
            gl, pl = lat(g, key), lat(p, key)
            r = med(gl) / med(pl) if med(gl) is not None and med(pl) else None
            bold = "**" if key == "p99" and conns == min(params["conns"]) else ""
            target = " (target < 10 ms)" if bold else ""
            print(f"| latency {key} ms, -c{conns}{target} | {bold}{mmm(gl)}{bold} | {mmm(pl)} | {fmt(r)} |")
        gcpu = [r["gomail_cpu_s"] * 1e3 / r["wrk"]["main"]["requests"] for r in g
                if r["gomail_cpu_s"] is not None and r["wrk"]["main"]["requests"]]
        pcpu = [r["peer_cpu_s"] * 1e3 / r["wrk"]["main"]["requests"] for r in p
                if r["peer_cpu_s"] is not None and r["wrk"]["main"]["requests"]]
        r = med(gcpu) / med(pcpu) if gcpu and pcpu and med(pcpu) else None
        print(f"| server CPU ms/req, -c{conns} | {mmm(gcpu, 3)} | {mmm(pcpu, 3)} | {fmt(r)} |")
        gerr, perr = sum(r["wrk"]["main"]["errors"] for r in g), sum(r["wrk"]["main"]["errors"] for r in p)
        print(f"| non-2xx + socket errors, -c{conns} (all runs) | {gerr} | {perr} | |")
        summary[f"c{conns}"] = {"gomail_rps": grps, "peer_rps": prps, "ratio_median": ratio, "ratio_per_round": per_round,
                                "gomail_p50": lat(g, "p50"), "gomail_p99": lat(g, "p99"),
                                "peer_p50": lat(p, "p50"), "peer_p99": lat(p, "p99")}
        if gerr or perr:
            problems.append(f"-c{conns}: wrk saw errors (gomail {gerr}, peer {perr})")
        for r in g:  # every request must have been a cached success
            c = r.get("auth_counters") or {}
            ok = sum(v for k, v in c.items() if k.startswith("attempts") and 'result="success"' in k)
            bad = sum(v for k, v in c.items() if k.startswith("attempts") and 'result="success"' not in k)
            misses = c.get("cache_misses", 0)
            if r.get("auth_counters") is None:
                problems.append(f"round {r['round']} -c{conns}: gomail's /metrics unreadable, outcomes unchecked")
            elif bad or misses or ok < r["wrk"]["main"]["requests"]:
                problems.append(f"round {r['round']} -c{conns}: gomail counted {ok:.0f} successes, {bad:.0f} other "
                                f"outcomes, {misses:.0f} cache misses for {r['wrk']['main']['requests']} wrk responses")
    live = {r["kind"]: r for r in runs if r["kind"].startswith("liveness")}
    if live:
        print("\n| `GET /health` on the monitor port (`wrk -t1 -c1`) | requests | p50 ms | p99 ms | max ms | errors |")
        print("|---|---|---|---|---|---|")
        for kind, label in (("liveness-idle", "idle"),
                            ("liveness-load", f"**{params['liveness_conns']} uncached logins in flight**")):
            r = live.get(kind)
            if not r:
                continue
            h = r["wrk"]["health"]
            lm = h["latency_ms"]
            bold = "**" if kind == "liveness-load" else ""
            print(f"| {label} | {h['requests']} | {fmt(lm.get('p50'))} | {bold}{fmt(lm.get('p99'))}{bold} | "
                  f"{fmt(lm.get('max'))} | {h['errors']} |")
            summary[kind] = lm
        r = live.get("liveness-load")
        if r:
            c, load = r.get("auth_counters") or {}, r["wrk"].get("load", {})
            bcrypts = c.get("cache_misses", 0)
            fails = sum(v for k, v in c.items() if k.startswith("attempts") and 'result="failure"' in k)
            oks = sum(v for k, v in c.items() if k.startswith("attempts") and 'result="success"' in k)
            print(f"\nMeanwhile gomail completed {fails:.0f} uncached checks ({fails / r['wall_s']:.1f}/s over "
                  f"{r['wall_s']:.1f} s, all failures; {bcrypts:.0f} bcrypt runs started, "
                  f"{oks:.0f} successes), gomail CPU "
                  f"{r['gomail_cpu_s'] / r['wall_s'] * 100:.0f}% of one core; the login load's wrk got "
                  f"{load.get('requests')} responses, login latency p50 {fmt(load.get('latency_ms', {}).get('p50'))} ms.")
            if oks or bcrypts == 0:
                problems.append("liveness: the login load was not uncached wrong-password checks")
            summary["liveness_uncached_checks_per_s"] = fails / r["wall_s"]
        for r in live.values():
            if r["wrk"]["health"]["errors"]:
                problems.append(f"{r['kind']}: /health answered {r['wrk']['health']['non2xx']} non-2xx, "
                                f"socket errors {r['wrk']['health']['socket_errors']}")
    prof = [r for r in runs if r["kind"] == "profile"]
    for r in prof:
        m = r["wrk"]["main"]
        print(f"\nProfiled run (py-spy attached, not in the table): gomail -c{r['conns']} {fmt(m['rps'])} req/s, "
              f"p99 {fmt(m['latency_ms'].get('p99'))} ms.")
    if problems:
        print("\nProblems:")
        for line in problems:
            print(f"- {line}")
    with open(args.out, "w") as f:
        json.dump({"params": params, "summary": summary, "problems": problems, "runs": runs}, f, indent=1)
    print(f"\n(JSON: {args.out})")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("freeports")
    p.add_argument("n", type=int)
    p = sub.add_parser("users")
    p.add_argument("--db", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--rounds", type=int, default=10)
    p = sub.add_parser("peer")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--klein", action="store_true", help="a bare Klein route instead of a twisted.web resource")
    p = sub.add_parser("wait-text")
    p.add_argument("file")
    p.add_argument("text")
    p.add_argument("--pid", type=int)
    p.add_argument("--timeout", type=float, default=60)
    p = sub.add_parser("run")
    p.add_argument("--out", required=True)
    p.add_argument("--pid", type=int, help="gomail's pid (CPU accounting)")
    p.add_argument("--peer-pid", type=int, help="the peer's pid (CPU accounting)")
    p.add_argument("--metrics", help="gomail's /metrics URL (auth counters before/after)")
    p.add_argument("--meta", default="{}", help="JSON merged into the record")
    p.add_argument("--timeout", type=float, default=120, help="bound on each wrk's run time")
    p.add_argument("commands", nargs=argparse.REMAINDER)
    p = sub.add_parser("parse-wrk")
    p.add_argument("file")
    p = sub.add_parser("profile")
    p.add_argument("file")
    p.add_argument("--top", type=int, default=15)
    p = sub.add_parser("summarize")
    p.add_argument("--runs", required=True)
    p.add_argument("--params", required=True)
    p.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.cmd == "freeports":
        print(" ".join(map(str, freeports(args.n))))
    elif args.cmd == "users":
        make_users(args.db, args.user, args.password, args.rounds)
    elif args.cmd == "peer":
        run_peer(args.port, klein=args.klein)
    elif args.cmd == "wait-text":
        return wait_text(args.file, args.text, args.pid, args.timeout)
    elif args.cmd == "run":
        if args.commands and args.commands[0] == "--":
            args.commands = args.commands[1:]
        return run(args)
    elif args.cmd == "parse-wrk":
        with open(args.file) as wrk_file:
            print(json.dumps(parse_wrk(wrk_file.read()), indent=1))
    elif args.cmd == "profile":
        profile(args.file, args.top)
    elif args.cmd == "summarize":
        return summarize(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
