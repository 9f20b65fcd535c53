"""Every admin route declares its role, and refuses anyone without a session or below that role."""

from __future__ import annotations

import re

from twisted.trial.unittest import TestCase

from gomail.admin import routes  # noqa: F401 - every route module joins the app
from gomail.admin.routing import ROUTES
from gomail.admin.store import ROLES, rank
from tests.admintesting import AdminHarness

_PARAMETER = re.compile(r"<(?:\w+:)?(\w+)>")


def concrete(path: str) -> str:
    """A route's path with every parameter filled in."""
    return _PARAMETER.sub(lambda m: f"some-{m.group(1)}", path)


class RoleTests(TestCase):
    """The role rules over the whole route table (L{gomail.admin.routing.ROUTES})."""

    def setUp(self) -> None:
        self.h = AdminHarness(self)
        self.tokens = {role: self.h.token(f"an-{role}", role) for role in ROLES}

    def test_routes_exist(self) -> None:
        """The table holds the session routes and every area's routes (users, admins, logs, queue...)."""
        paths = {spec.path for spec in ROUTES}
        self.assertIn("/api/login", paths)
        self.assertTrue(all(spec.role in (None, *ROLES) for spec in ROUTES))

    def test_no_session_is_401(self) -> None:
        """Every route with a role answers 401 to a request without a session, before reading its input."""
        for spec in ROUTES:
            if spec.role is None:
                continue
            answer = self.h.call(spec.method, concrete(spec.path))
            self.assertEqual(answer.code, 401, f"{spec.method} {spec.path}: {answer.body!r}")

    def test_lower_roles_are_403(self) -> None:
        """Every route answers 403 to each role below its own, whatever the input."""
        checked = 0
        for spec in ROUTES:
            if spec.role is None:
                continue
            for role in ROLES:
                if rank(role) >= rank(spec.role):
                    continue
                answer = self.h.call(spec.method, concrete(spec.path), token=self.tokens[role])
                self.assertEqual(answer.code, 403, f"{role} on {spec.method} {spec.path}: {answer.body!r}")
                checked += 1
        self.assertGreater(checked, 0)

    def test_own_role_passes_the_role_check(self) -> None:
        """A session of the route's own role is never refused for its role (it may still be 404, 422...)."""
        for spec in ROUTES:
            if spec.role is None or spec.path == "/api/logout":
                continue
            answer = self.h.call(spec.method, concrete(spec.path), token=self.tokens[spec.role])
            self.assertNotIn(answer.code, (401, 500), f"{spec.method} {spec.path}: {answer.body!r}")
            if answer.code == 403:
                self.assertNotIn("needs the", self.h.json(answer)["error"], f"{spec.method} {spec.path}")
