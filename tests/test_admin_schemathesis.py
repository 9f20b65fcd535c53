"""
The admin API against its own OpenAPI document: schemathesis drives a live
C{twistd gomail} (examples, coverage and fuzzing phases, positive and
negative data) and checks that nothing answers 5xx and that every answer's
status, content type and body match the document.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import treq
from twisted.internet import reactor
from twisted.trial.unittest import SkipTest, TestCase

from gomail.admin import store
from gomail.auth import passwords, userdb
from tests.gomailprocess import GomailNode
from tests.processes import free_port, spawn

CONFIG = """
dataDir = {data_json}
smtpHost = "127.0.0.1"
smtpPort = {smtp}
[smtp]
hostname = "mx.example"
localDomains = ["example.com"]
[auth]
bcryptRounds = 4
[monitor]
listen = ["tcp:{monitor}:interface=127.0.0.1"]
[nginxAuth]
listen = ["tcp:{nginx}:interface=127.0.0.1"]
[admin]
listen = ["tcp:{admin}:interface=127.0.0.1"]
loginRateLimit = 100000
"""
#: What every answer must satisfy.
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
#: Routes left out: they end the session or the credentials every other request uses.
EXCLUDED = ("/api/logout", "/api/profile/password", "/api/profile/totp", "/api/profile/totp/confirm",
            "/api/refresh")


def schemathesis() -> str:
    path = os.path.join(os.path.dirname(sys.executable), "schemathesis")
    if not os.path.exists(path):
        path = shutil.which("schemathesis") or ""
    if not path:
        raise SkipTest("schemathesis is not installed (pip install -e '.[test]')")
    return path


class SchemathesisTests(TestCase):
    """schemathesis against a live server."""

    timeout = 900

    async def test_api_matches_its_document(self) -> None:
        """No input makes a 5xx; every answer's status, type and body are as the OpenAPI document says."""
        tool = schemathesis()
        ports = {name: free_port() for name in ("smtp", "monitor", "nginx", "admin")}
        node = GomailNode(self)
        node.write_config(CONFIG.format(data_json=json.dumps(node.data), **ports))
        database = os.path.join(node.data, "gomail.db")
        os.makedirs(node.data, exist_ok=True)
        conn = userdb.open_connection(database)
        try:
            userdb.transact(conn, userdb.migrate)
            userdb.transact(conn, store.add_admin, "root", passwords.hash_password("fuzz me gently", 4),
                            "superadmin", 0.0)
            userdb.transact(conn, userdb.add_user, "alice@example.com", passwords.hash_password("pw", 4), 0.0)
        finally:
            conn.close()
        await node.start()
        base = f"http://127.0.0.1:{ports['admin']}"
        response = await treq.post(f"{base}/api/login", json={"username": "root", "password": "fuzz me gently"},
                                   timeout=30, persistent=False)
        body = await response.json()
        self.assertEqual(response.code, 200, body)
        token = body["token"]
        report = os.path.abspath("schemathesis-report")
        argv = [tool, "run", f"{base}/api/openapi.json", "--header", f"Authorization: Bearer {token}",
                "--checks", CHECKS,
                "--phases", "examples,coverage,fuzzing", "--max-examples", "15", "--seed", "20",
                "--workers", "2", "--request-timeout", "30", "--report", "junit", "--report-dir", report,
                "--generation-codec", "utf-8", "--suppress-health-check", "all"]
        for path in EXCLUDED:
            argv += ["--exclude-path", path]
        run = spawn(reactor, argv, cwd=node.workdir, env={"NO_COLOR": "1", "SCHEMATHESIS_HOOKS": ""})
        code = await run.ended
        output = run.output.decode(errors="replace")
        print(output[-3000:])
        self.assertEqual(code, 0, output[-20000:])
        self.assertNotIn("Traceback", node.output.decode(errors="replace"))
        await node.stop_cleanly()
