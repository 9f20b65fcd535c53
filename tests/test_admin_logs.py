"""The admin API's log routes: the login audit log and the operation log, as JSON pages and CSV (gomail.admin.api_logs)."""

from __future__ import annotations

import csv
import io
from typing import Any
from urllib.parse import urlencode

from jsonschema import Draft202012Validator
from twisted.enterprise.adbapi import Transaction
from twisted.trial.unittest import TestCase

from gomail.admin import api_logs, oplog, stats
from gomail.admin.routing import ROUTES
from gomail.auth.authlog import AuthLogEntry, insert_entries
from tests.admintesting import START, AdminHarness, Answer


def entry(time: float, user: str = "alice@example.com", result: str = "success", ip: str = "192.0.2.1",
          protocol: str = "imap", latency: float = 1.5, backend: str | None = "10.0.0.5:143") -> AuthLogEntry:
    return AuthLogEntry(time, user, protocol, ip, result, "password" if result == "success" else "bad-password",
                        latency, backend)


def rows(answer: Answer) -> list[list[str]]:
    """A CSV answer's rows, the header first."""
    return list(csv.reader(io.StringIO(answer.body.decode("utf-8"))))


class LogsBase(TestCase):
    """An admin app with an auditor logged in (C{self.token})."""

    def setUp(self) -> None:
        self.h = AdminHarness(self)
        self.token = self.h.token("eve", "auditor")

    def get(self, path: str, code: int = 200, **query: Any) -> Answer:
        answer = self.h.call("GET", f"{path}?{urlencode(query)}" if query else path, token=self.token)
        self.assertEqual(answer.code, code, answer.body)
        return answer

    def ok(self, path: str, **query: Any) -> Any:
        """The JSON body of a 200 answer, checked against the route's declared answer schema."""
        body = self.h.json(self.get(path, **query))
        spec = next(s for s in ROUTES if s.path == path and s.method == "GET")
        Draft202012Validator(spec.response).validate(body)
        return body

    def add(self, *entries: AuthLogEntry) -> None:
        self.h.db.run(insert_entries, list(entries))


class AuthLogTests(LogsBase):
    """GET /api/logs/auth."""

    def test_newest_first_with_total(self) -> None:
        """Every field of each entry, newest first; the total and the default page size."""
        self.add(entry(START - 30, "bob@example.com", "failure", latency=250.0, backend=None), entry(START - 10))
        body = self.ok("/api/logs/auth")
        self.assertEqual(body["total"], 2)
        self.assertEqual((body["page"], body["per_page"]), (1, 50))
        self.assertEqual(body["items"], [
            {"time": START - 10, "user": "alice@example.com", "protocol": "imap", "client_ip": "192.0.2.1",
             "result": "success", "reason": "password", "latency_ms": 1.5, "backend": "10.0.0.5:143"},
            {"time": START - 30, "user": "bob@example.com", "protocol": "imap", "client_ip": "192.0.2.1",
             "result": "failure", "reason": "bad-password", "latency_ms": 250.0, "backend": None},
        ])

    def test_filters(self) -> None:
        """user, ip (any spelling of the address), protocol and result match exactly; since <= time < until."""
        self.add(entry(100.0, "alice@example.com"), entry(200.0, "bob@example.com", "failure", "2001:db8::1"),
                 entry(300.0, "alice@example.com", protocol="smtp"), entry(400.0, "alice@example.com", "tempfail"))

        def times(**query: Any) -> list[float]:
            body = self.ok("/api/logs/auth", **query)
            self.assertEqual(body["total"], len(body["items"]))
            return [item["time"] for item in body["items"]]

        self.assertEqual(times(user="alice@example.com"), [400.0, 300.0, 100.0])
        self.assertEqual(times(user="alice"), [])
        self.assertEqual(times(ip="2001:DB8:0::0001"), [200.0])
        self.assertEqual(times(protocol="smtp"), [300.0])
        self.assertEqual(times(result="failure"), [200.0])
        self.assertEqual(times(since=200, until=400), [300.0, 200.0])
        self.assertEqual(times(since=200.5), [400.0, 300.0])
        self.assertEqual(times(user="alice@example.com", result="success", until=300), [100.0])

    def test_pagination(self) -> None:
        """Pages of per_page entries; entries of the same time never appear twice; past the end: none."""
        self.add(*(entry(1000.0, f"u{i}") for i in range(5)))
        pages = [self.ok("/api/logs/auth", page=page, per_page=2) for page in (1, 2, 3, 4)]
        self.assertEqual([p["total"] for p in pages], [5, 5, 5, 5])
        self.assertEqual([[i["user"] for i in p["items"]] for p in pages], [["u4", "u3"], ["u2", "u1"], ["u0"], []])
        self.assertEqual(self.ok("/api/logs/auth", page=21, per_page=500)["items"], [])
        # Deeper than the first MAX_COUNT entries: narrow the time range instead (an OFFSET of millions
        # would hold the database thread).
        answer = self.h.call("GET", "/api/logs/auth?page=100000000000000000&per_page=500", token=self.token)
        self.assertEqual(answer.code, 400, answer.body)

    def test_bad_queries(self) -> None:
        """Bad parameters are refused, naming the parameter; nothing is a server error."""
        for query, code, text in (({"result": "maybe"}, 400, "'result'"), ({"ip": "not-an-ip"}, 422, "'ip'"),
                                  ({"page": 0}, 400, "'page'"), ({"per_page": 501}, 400, "'per_page'"),
                                  ({"since": "yesterday"}, 400, "'since'"), ({"format": "xml"}, 400, "'format'"),
                                  ({"level": "1"}, 400, "'level'"), ({"user": "x" * 255}, 400, "'user'")):
            answer = self.get("/api/logs/auth", code, **query)
            self.assertIn(text, self.h.json(answer)["error"])

    def test_csv(self) -> None:
        """format=csv: a UTF-8 text/csv attachment with a header row, every matching entry, newest first."""
        self.add(entry(100.0, "bob@example.com", "failure", backend=None), entry(200.0, 'al,"ice"@example.com'),
                 entry(300.0, "carol@example.com"))
        answer = self.get("/api/logs/auth", format="csv", page=2, per_page=1, until=300)
        self.assertEqual(answer.header("Content-Type"), "text/csv; charset=utf-8")
        self.assertEqual(answer.header("Content-Disposition"), 'attachment; filename="auth-log.csv"')
        self.assertEqual(answer.header("X-Total-Count"), "2")
        self.assertEqual(rows(answer), [
            ["time", "user", "protocol", "client_ip", "result", "reason", "latency_ms", "backend"],
            ["200.0", 'al,"ice"@example.com', "imap", "192.0.2.1", "success", "password", "1.5", "10.0.0.5:143"],
            ["100.0", "bob@example.com", "imap", "192.0.2.1", "failure", "bad-password", "1.5", ""],
        ])

    def test_csv_formula_injection(self) -> None:
        """A cell starting with = + - @ (or a tab or CR) is prefixed with ' so no spreadsheet runs it."""
        names = ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1)", "\tx", "safe=1", "'quoted"]
        self.add(*(entry(float(i), name) for i, name in enumerate(names)))
        users = [row[1] for row in rows(self.get("/api/logs/auth", format="csv"))[1:]]
        self.assertEqual(users[::-1], ["'=cmd|' /C calc'!A0", "'+1+1", "'-2+3", "'@SUM(A1)", "'\tx", "safe=1",
                                       "'quoted"])

    def test_csv_is_bounded(self) -> None:
        """A CSV export holds at most CSV_MAX_ROWS entries, the newest; X-Total-Count says how many matched."""
        self.patch(api_logs, "CSV_MAX_ROWS", 2)
        self.add(*(entry(float(i)) for i in range(5)))
        answer = self.get("/api/logs/auth", format="csv")
        self.assertEqual(answer.header("X-Total-Count"), "5")
        self.assertEqual([row[0] for row in rows(answer)[1:]], ["4.0", "3.0"])

    def test_through_the_pool(self) -> None:
        """The cursor functions work with what the server's pool hands them (an adbapi Transaction)."""
        self.add(entry(START - 2, "=x"), entry(START - 1))
        transaction = Transaction(None, self.h.db.conn)
        body, _last, count = api_logs._csv_chunk(transaction, api_logs.AUTH_LOG, "", (), None, True)
        self.assertEqual((count, body.count(b"\r\n"), body.count(b"'=x")), (2, 3, 1))
        total, items = api_logs._page(transaction, api_logs.OP_LOG, "", (), 10, 0)
        self.assertEqual((total, items[0]["action"]), (1, "login"))
        window = stats.window("hour", START)
        self.assertEqual(stats.audit_statistics(transaction, window)["totals"]["logins"], 2)

    def test_openapi_lists_csv(self) -> None:
        """The OpenAPI document gives both answers of the log routes: JSON and text/csv."""
        document = self.h.json(self.h.call("GET", "/api/openapi.json"))
        for path in ("/api/logs/auth", "/api/logs/operations"):
            content = document["paths"][path]["get"]["responses"]["200"]["content"]
            self.assertEqual(sorted(content), ["application/json", "text/csv"])


class OperationsLogTests(LogsBase):
    """GET /api/logs/operations."""

    def record(self, time: float, actor: str, action: str, target: str, before: Any = None, after: Any = None,
               ip: str = "127.0.0.1") -> None:
        self.h.db.run(oplog.record, time, actor, action, target, before, after, ip)

    def test_entries_decoded(self) -> None:
        """before and after are the JSON values recorded (secrets redacted), not text; newest first."""
        self.record(START + 1, "boss", "user.update", "alice@example.com", {"enabled": True},
                    {"enabled": False, "password": "hunter2"})
        self.record(START + 2, "cli:root", "user.delete", "bob@example.com", ["a", 1], None)
        body = self.ok("/api/logs/operations", since=START + 1)
        self.assertEqual(body["total"], 2)
        self.assertEqual(body["items"], [
            {"time": START + 2, "actor": "cli:root", "action": "user.delete", "target": "bob@example.com",
             "before": ["a", 1], "after": None, "client_ip": "127.0.0.1"},
            {"time": START + 1, "actor": "boss", "action": "user.update", "target": "alice@example.com",
             "before": {"enabled": True}, "after": {"enabled": False, "password": "[redacted]"},
             "client_ip": "127.0.0.1"},
        ])

    def test_text_that_is_not_json(self) -> None:
        """An entry whose before is not JSON (not written by oplog.record) is shown as its text."""
        self.h.db.run(lambda c: c.execute("INSERT INTO op_log (time, actor, action, target, before, after, "
                                          "client_ip) VALUES (?, 'x', 'y', 'z', '{broken', NULL, '')",
                                          (START + 5,)))
        self.assertEqual(self.ok("/api/logs/operations", actor="x")["items"][0]["before"], "{broken")

    def test_filters_and_pages(self) -> None:
        """actor, action and target match exactly, with the time range; the auditor's own login is there too."""
        self.record(START + 1, "boss", "user.create", "a@example.com")
        self.record(START + 2, "boss", "user.delete", "a@example.com")
        self.record(START + 3, "root", "user.create", "b@example.com")

        def actions(**query: Any) -> list[tuple[str, str]]:
            return [(i["actor"], i["action"]) for i in self.ok("/api/logs/operations", **query)["items"]]

        self.assertEqual(actions(actor="eve"), [("eve", "login")])
        self.assertEqual(actions(actor="boss"), [("boss", "user.delete"), ("boss", "user.create")])
        self.assertEqual(actions(action="user.create"), [("root", "user.create"), ("boss", "user.create")])
        self.assertEqual(actions(target="a@example.com", until=START + 2), [("boss", "user.create")])
        page = self.ok("/api/logs/operations", page=2, per_page=3)
        self.assertEqual((page["total"], [i["actor"] for i in page["items"]]), (4, ["eve"]))

    def test_csv(self) -> None:
        """The CSV holds before and after as their JSON text, formula-safe."""
        self.record(START + 1, "boss", "config.set", "=HYPERLINK(1)", {"a": 1}, -5)
        answer = self.get("/api/logs/operations", format="csv", actor="boss")
        self.assertEqual(answer.header("Content-Disposition"), 'attachment; filename="operations-log.csv"')
        self.assertEqual(rows(answer), [["time", "actor", "action", "target", "before", "after", "client_ip"],
                                        [str(START + 1), "boss", "config.set", "'=HYPERLINK(1)", '{"a": 1}', "'-5",
                                         "127.0.0.1"]])


class LogRolesTests(TestCase):
    """Who may read the logs and the dashboard."""

    def test_auditor_and_above(self) -> None:
        """Without a session: 401 (with WWW-Authenticate); auditor, admin and superadmin may read."""
        h = AdminHarness(self)
        tokens = [h.token(name, role) for name, role in (("eve", "auditor"), ("boss", "admin"),
                                                         ("root", "superadmin"))]
        for path in ("/api/logs/auth", "/api/logs/operations", "/api/logs/auth?format=csv", "/api/dashboard"):
            answer = h.call("GET", path)
            self.assertEqual(answer.code, 401, path)
            self.assertEqual(answer.header("WWW-Authenticate"), 'Bearer realm="gomail admin"')
            self.assertEqual(h.call("GET", path, token="not-a-token").code, 401, path)
            for token in tokens:
                self.assertEqual(h.call("GET", path, token=token).code, 200, path)
