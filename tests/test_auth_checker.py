"""The checker chain: passwords, TOTP, app passwords, lockout, cache, blacklist — on a Clock."""

from __future__ import annotations

import bcrypt
import pyotp
from twisted.internet.defer import fail
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from gomail.auth.checker import AuthFailure, LoginAttempt, TemporaryAuthError, login
from gomail.auth.lockout import state_key
from gomail.auth.records import BlacklistEntry
from gomail.state.memory import MemoryStateStore
from tests.authtesting import MemoryUsers, SyncVerifier, auth_settings, authenticator, portal_for
from tests.test_smtp_auth import BrokenStore

SECRET = pyotp.random_base32()
T0 = 1_700_000_000.0  # a moment 20 s into a TOTP step


class CheckerMixin:
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(T0)
        self.state = MemoryStateStore(self.clock)
        self.users = MemoryUsers()
        self.verifier = SyncVerifier()
        self.users.add("alice", "s3cret")
        self.users.add("tom", "pass", totp_secret=SECRET, totp_enabled=True,
                       app_passwords={"phone": "abcd-efgh-ijkl-mnop"})
        self.auth = authenticator(self.clock, self.state, self.users, self.verifier)

    def check(self, user, password, ip="192.0.2.1"):
        """The attempt's result: the Account, or the failure's reason."""
        d = self.auth.authenticate(LoginAttempt(user, password, ip, "smtp"))
        results = []
        d.addBoth(results.append)
        self.assertTrue(results, "the check did not finish synchronously")
        result = results[0]
        if hasattr(result, "check"):
            if result.check(AuthFailure):
                return result.value.reason
            if result.check(TemporaryAuthError):
                return "temporary"
            result.raiseException()
        return result

    def code(self, offset_steps=0):
        return pyotp.TOTP(SECRET).at(self.clock.seconds() + 30 * offset_steps)

    def wrong_code(self):
        """Six digits that are no valid code now, nor one step either side."""
        valid = {self.code(step) for step in (-1, 0, 1)}
        return next(code for code in ("000000", "111111", "222222", "333333") if code not in valid)


class PasswordTests(CheckerMixin, TestCase):
    """Passwords and user names."""

    def test_right_password(self):
        """The right password succeeds, via bcrypt, and returns the canonical user."""
        success = self.check("alice", "s3cret")
        self.assertEqual((success.name, success.via, success.password), ("alice", "password", "s3cret"))

    def test_wrong_password(self):
        """A wrong password fails with reason bad-password."""
        self.assertEqual(self.check("alice", "S3cret"), "bad-password")

    def test_name_variants_share_identity(self):
        """'Alice', ' alice ' and the fullwidth NFKC form all log in as the one user alice."""
        for variant in ("Alice", " alice ", "\uff41\uff4c\uff49\uff43\uff45"):
            self.assertEqual(self.check(variant, "s3cret").name, "alice")

    def test_name_variants_share_lockout(self):
        """Failures under different spellings of a name count against the same user."""
        for variant in ("Alice", " alice", "ALICE", "alice ", "\uff21lice"):
            self.check(variant, "wrong")
        self.assertEqual(self.check("alice", "s3cret"), "locked")

    def test_unknown_user_spends_a_bcrypt(self):
        """An unknown user fails like a wrong password after one bcrypt check against the dummy hash."""
        self.assertEqual(self.check("nobody", "s3cret"), "unknown-user")
        self.assertEqual(self.verifier.hashes, [self.auth._dummy])

    def test_disabled_user(self):
        """A disabled user fails (after the dummy bcrypt), even with the right password."""
        self.users.change("alice", enabled=False)
        self.assertEqual(self.check("alice", "s3cret"), "disabled")
        self.assertEqual(self.verifier.hashes, [self.auth._dummy])

    def test_portal(self):
        """Logging in through the twisted.cred portal yields the Account as the avatar."""
        results = []
        login(portal_for(self.auth), LoginAttempt("alice", "s3cret", "192.0.2.1", "imap")).addBoth(results.append)
        self.assertEqual(results[0].name, "alice")

    def test_stats(self):
        """Attempts are counted by protocol and result, without user names."""
        self.check("alice", "s3cret")
        self.check("alice", "wrong")
        self.assertEqual(self.auth.stats.attempts[("smtp", "success")], 1)
        self.assertEqual(self.auth.stats.attempts[("smtp", "failure")], 1)


class TOTPTests(CheckerMixin, TestCase):
    """The 6 digits appended to the password of a TOTP user."""

    def test_right_code(self):
        """Password + current code succeeds; the returned password has the code stripped."""
        success = self.check("tom", "pass" + self.code())
        self.assertEqual(success.password, "pass")

    def test_wrong_code(self):
        """A wrong code fails with reason bad-totp."""
        self.assertEqual(self.check("tom", "pass" + self.wrong_code()), "bad-totp")

    def test_missing_code(self):
        """The password alone fails for a TOTP user."""
        self.assertEqual(self.check("tom", "pass"), "bad-totp")

    def test_right_code_wrong_password(self):
        """A right code does not save a wrong password."""
        self.assertEqual(self.check("tom", "nope" + self.code()), "bad-password")

    def test_code_used_once(self):
        """The same code is refused the second time (replay), even within its step."""
        code = self.code()
        self.check("tom", "pass" + code)
        self.assertEqual(self.check("tom", "pass" + code), "totp-replay")

    def test_older_code_refused(self):
        """RFC 6238 5.2: after the code of step T, the (still valid) code of T-1 is refused; T+1 works."""
        self.assertEqual(self.check("tom", "pass" + self.code()).name, "tom")
        self.assertEqual(self.check("tom", "pass" + self.code(-1)), "totp-replay")
        self.assertEqual(self.check("tom", "pass" + self.code(+1)).name, "tom")
        self.assertEqual(self.check("tom", "pass" + self.code()), "totp-replay")

    def test_older_code_refused_across_authenticators(self):
        """Two Authenticators (two servers) sharing one store: a code older than one used on the other fails."""
        other = authenticator(self.clock, self.state, self.users, SyncVerifier())
        self.assertEqual(self.check("tom", "pass" + self.code()).name, "tom")
        d = other.authenticate(LoginAttempt("tom", "pass" + self.code(-1), "192.0.2.1", "smtp"))
        self.assertEqual(self.failureResultOf(d, AuthFailure).value.reason, "totp-replay")
        d = other.authenticate(LoginAttempt("tom", "pass" + self.code(+1), "192.0.2.1", "smtp"))
        self.assertEqual(self.successResultOf(d).name, "tom")
        self.assertEqual(self.check("tom", "pass" + self.code()), "totp-replay")

    def test_last_step_mark_expires_with_its_codes(self):
        """Once every code up to the last step used is out of the window, the mark is gone from the store."""
        self.check("tom", "pass" + self.code(+1))
        mark = state_key("totp:last", "tom")
        self.assertEqual(self.successResultOf(self.state.get(mark)), b"%d" % (T0 // 30 + 1))
        self.clock.advance(4 * 30)
        self.assertIsNone(self.successResultOf(self.state.get(mark)))

    def test_one_step_drift(self):
        """Codes of the previous and the next step are accepted."""
        self.assertEqual(self.check("tom", "pass" + self.code(-1)).name, "tom")
        self.assertEqual(self.check("tom", "pass" + self.code(+1)).name, "tom")

    def test_two_steps_drift(self):
        """Codes two steps away are refused."""
        self.assertEqual(self.check("tom", "pass" + self.code(-2)), "bad-totp")
        self.assertEqual(self.check("tom", "pass" + self.code(+2)), "bad-totp")

    def test_app_password_without_code(self):
        """An app password is accepted without a TOTP code, and its use is recorded."""
        success = self.check("tom", "abcd-efgh-ijkl-mnop")
        self.assertEqual(success.via, "app-password")
        self.assertEqual(self.users.touched, [1])
        self.assertEqual(self.verifier.hashes, [])

    def test_revoked_app_password(self):
        """A revoked app password fails."""
        self.users.change("tom", app_passwords=())
        self.assertNotEqual(getattr(self.check("tom", "abcd-efgh-ijkl-mnop"), "name", None), "tom")


class LockoutTests(CheckerMixin, TestCase):
    """Failures per (user, client IP) and per client IP, and the locks they cause (more: test_auth_lockout)."""

    def test_pair_lockout(self):
        """After 5 failures from one IP the right password fails there as 'locked' for lockTTL seconds, then works."""
        for _ in range(5):
            self.check("alice", "wrong")
        self.assertEqual(self.check("alice", "s3cret"), "locked")
        self.clock.advance(299)
        self.assertEqual(self.check("alice", "s3cret"), "locked")
        self.clock.advance(1)
        self.assertEqual(self.check("alice", "s3cret").name, "alice")
        self.assertEqual(self.auth.stats.lockouts["user-ip"], 1)

    def test_failures_spread_over_ips_lock_nothing(self):
        """Five failures of alice from five IPs lock her nowhere: each pair has one."""
        for n in range(5):
            self.check("alice", "wrong", ip=f"192.0.2.{n + 10}")
        self.assertEqual(self.check("alice", "s3cret", ip="192.0.2.10").name, "alice")

    def test_failures_expire(self):
        """Failures older than failTTL no longer count towards a lock."""
        for _ in range(4):
            self.check("alice", "wrong")
        self.clock.advance(60)
        self.check("alice", "wrong")
        self.assertEqual(self.check("alice", "s3cret").name, "alice")

    def test_success_clears_pair_counter(self):
        """A success resets the failure count of that user on that IP."""
        for _ in range(4):
            self.check("alice", "wrong")
        self.check("alice", "s3cret")
        for _ in range(4):
            self.check("alice", "wrong")
        self.assertEqual(self.check("alice", "s3cret").name, "alice")

    def test_ip_lockout(self):
        """maxFailAttemptsPerIP failures from one IP, over many users, lock that IP for everyone; others pass."""
        for i in range(20):
            self.check(f"user{i}", "wrong", ip="198.51.100.7")
        self.assertEqual(self.check("alice", "s3cret", ip="198.51.100.7"), "locked")
        self.assertEqual(self.check("alice", "s3cret", ip="198.51.100.8").name, "alice")
        self.assertEqual(self.auth.stats.lockouts["client IP"], 1)

    def test_bad_user_names_count_for_the_ip(self):
        """Names that are no user names count against the client IP too."""
        for _ in range(20):
            self.assertEqual(self.check("", "x", ip="198.51.100.9"), "bad-username")
        self.assertEqual(self.check("alice", "s3cret", ip="198.51.100.9"), "locked")


class RefusalCostTests(CheckerMixin, TestCase):
    """
    Every kind of refusal runs the verifier exactly once, so its time is one
    bcrypt verification whichever kind it is; a success from the cache runs none.
    (bench/auth_timing.py measures the times themselves.)
    """

    def refuse(self, reason, user, password, ip="192.0.2.1"):
        """Check that the attempt is refused for C{reason} after exactly one verifier call."""
        before = len(self.verifier.hashes)
        self.assertEqual(self.check(user, password, ip), reason)
        self.assertEqual(len(self.verifier.hashes) - before, 1, f"{reason}: verifier calls")

    def test_wrong_password(self):
        """A wrong password: one verification, against the user's own hash."""
        self.refuse("bad-password", "alice", "wrong")
        self.assertEqual(self.verifier.hashes, [self.users.users["alice"].password_hash])

    def test_password_bcrypt_cannot_take(self):
        """A password bcrypt refuses without work (over 72 bytes, NUL) still costs one verification."""
        self.refuse("bad-password", "alice", "x" * 100)
        self.refuse("bad-password", "alice", "s3cret\0")
        self.assertEqual(self.verifier.hashes, [self.auth._dummy] * 2)

    def test_unknown_disabled_bad_name(self):
        """Unknown user, disabled user and a name that is none: one dummy verification each."""
        self.refuse("unknown-user", "nobody", "s3cret")
        self.users.change("alice", enabled=False)
        self.refuse("disabled", "alice", "s3cret")
        self.refuse("bad-username", "", "s3cret")
        self.assertEqual(self.verifier.hashes, [self.auth._dummy] * 3)

    def test_locked(self):
        """A locked pair and a locked IP: one dummy verification, not zero."""
        for _ in range(5):
            self.check("alice", "wrong")
        self.refuse("locked", "alice", "s3cret")
        for i in range(20):
            self.check(f"user{i}", "wrong", ip="198.51.100.7")
        self.refuse("locked", "alice", "s3cret", ip="198.51.100.7")
        self.assertEqual(self.verifier.hashes[-1], self.auth._dummy)

    def test_blacklisted(self):
        """A blacklisted client: one dummy verification, and still no user lookup."""
        self.users.blacklist.append(BlacklistEntry("203.0.113.0/24", None))
        self.refuse("blacklisted", "alice", "s3cret", ip="203.0.113.9")
        self.assertEqual(self.users.lookups, 0)

    def test_totp_refusals_uncached(self):
        """Right password with a wrong, missing or malformed code: one verification each."""
        self.refuse("bad-totp", "tom", "pass" + self.wrong_code())
        self.refuse("bad-totp", "tom", "pass")
        self.refuse("bad-totp", "tom", "pass12345x")
        self.refuse("bad-password", "tom", "nope" + self.code())

    def test_wrong_code_after_cached_password(self):
        """
        The password in the auth cache and a wrong code: still one (dummy)
        verification, so the time does not tell that the password was right.
        """
        self.check("tom", "pass" + self.code())
        self.refuse("bad-totp", "tom", "pass" + self.wrong_code())
        self.assertEqual(self.verifier.hashes[-1], self.auth._dummy)

    def test_reused_code(self):
        """A reused code costs one verification, its password served from the cache or not."""
        code = self.code()
        self.check("tom", "pass" + code)
        self.refuse("totp-replay", "tom", "pass" + code)
        self.auth.settings = auth_settings(cacheTTL=0)
        self.refuse("totp-replay", "tom", "pass" + code)

    def test_successes(self):
        """A success runs bcrypt at most once (none from the cache, none for an app password)."""
        self.check("alice", "s3cret")
        self.check("alice", "s3cret")
        self.check("tom", "abcd-efgh-ijkl-mnop")
        self.assertEqual(len(self.verifier.hashes), 1)


class HashCostTests(CheckerMixin, TestCase):
    """
    A user whose hash has another bcrypt cost than auth.bcryptRounds (the
    dummy hash's) is rehashed at the first right password, so a refusal's time
    does not tell that user from an unknown one for long.
    """

    def test_rehashed_at_the_configured_cost(self):
        """A cost-5 hash verifies, then is replaced by a cost-4 hash of the same password; the version is kept."""
        self.users.change("alice", password_hash=bcrypt.hashpw(b"s3cret", bcrypt.gensalt(5)))
        version = self.users.users["alice"].credential_version
        self.assertEqual(self.check("alice", "s3cret").via, "password")
        upgraded = self.users.users["alice"]
        self.assertTrue(upgraded.password_hash.startswith(b"$2b$04$"))
        self.assertTrue(bcrypt.checkpw(b"s3cret", upgraded.password_hash))
        self.assertEqual(upgraded.credential_version, version)
        self.assertEqual(self.check("alice", "s3cret").via, "cache")  # the cached login stays valid

    def test_not_on_a_wrong_password(self):
        """A wrong password changes nothing."""
        old = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(5))
        self.users.change("alice", password_hash=old)
        self.assertEqual(self.check("alice", "wrong"), "bad-password")
        self.assertEqual(self.users.users["alice"].password_hash, old)

    def test_same_cost_left_alone(self):
        """A hash at the configured cost is not rewritten."""
        old = self.users.users["alice"].password_hash
        self.check("alice", "s3cret")
        self.assertEqual(self.users.users["alice"].password_hash, old)

    def test_failed_upgrade_does_not_fail_the_login(self):
        """A store that cannot save the new hash: the login still succeeds, the failure is logged."""
        self.users.change("alice", password_hash=bcrypt.hashpw(b"s3cret", bcrypt.gensalt(5)))
        self.users.upgrade_password_hash = lambda *args: fail(OSError("database is locked"))
        self.assertEqual(self.check("alice", "s3cret").name, "alice")


class CacheTests(CheckerMixin, TestCase):
    """The authentication cache."""

    def test_hit(self):
        """A second check within cacheTTL succeeds from the cache without bcrypt."""
        self.check("alice", "s3cret")
        self.assertEqual(self.check("alice", "s3cret").via, "cache")
        self.assertEqual(len(self.verifier.hashes), 1)
        self.assertEqual((self.auth.stats.cache_hits, self.auth.stats.cache_misses), (1, 1))

    def test_expiry(self):
        """After cacheTTL the check runs bcrypt again."""
        self.check("alice", "s3cret")
        self.clock.advance(300)
        self.assertEqual(self.check("alice", "s3cret").via, "password")

    def test_wrong_password_not_served_from_cache(self):
        """A different password misses the cache and fails."""
        self.check("alice", "s3cret")
        self.assertEqual(self.check("alice", "s3cret!"), "bad-password")

    def test_invalidated_by_credential_change(self):
        """A password change (new credential version) invalidates cached successes of the old password."""
        self.check("alice", "s3cret")
        from tests.authtesting import hashed
        self.users.change("alice", password_hash=hashed("new"))
        self.assertEqual(self.check("alice", "s3cret"), "bad-password")
        self.assertEqual(self.check("alice", "new").via, "password")

    def test_invalidated_by_disable(self):
        """Disabling a user refuses them at once, cache or not."""
        self.check("alice", "s3cret")
        self.users.change("alice", enabled=False)
        self.assertEqual(self.check("alice", "s3cret"), "disabled")

    def test_key_holds_no_secret(self):
        """The cache key is an HMAC: neither the user name nor the password appears in any stored key."""
        self.check("alice", "s3cret")
        keys = " ".join(list(self.state._values) + list(self.state._logs))
        self.assertNotIn("alice", keys)
        self.assertNotIn("s3cret", keys)

    def test_filled_only_after_the_whole_login(self):
        """The right password with a wrong code leaves nothing in the cache: the next login runs bcrypt again."""
        self.assertEqual(self.check("tom", "pass" + self.wrong_code()), "bad-totp")
        self.assertEqual([k for k in self.state._values if k.startswith("auth:cache:")], [])
        self.assertEqual(self.check("tom", "pass" + self.code()).via, "password")

    def test_not_filled_by_a_replay(self):
        """A reused code with the right (uncached) password fills no cache entry either."""
        self.auth.settings = auth_settings(cacheTTL=0)
        code = self.code()
        self.check("tom", "pass" + code)
        self.auth.settings = auth_settings()
        self.assertEqual(self.check("tom", "pass" + code), "totp-replay")
        self.assertEqual([k for k in self.state._values if k.startswith("auth:cache:")], [])

    def test_totp_still_checked_on_cache_hit(self):
        """For a TOTP user the cache spares bcrypt but never the code: a replayed code fails."""
        code = self.code()
        self.check("tom", "pass" + code)
        self.assertEqual(self.check("tom", "pass" + code), "totp-replay")
        self.assertEqual(self.check("tom", "pass" + self.code(1)).via, "cache")


class BlacklistTests(CheckerMixin, TestCase):
    """The IP blacklist, checked before anything else."""

    def test_cidr(self):
        """A client inside a blacklisted network is refused with the right password, before any lookup."""
        self.users.blacklist.append(BlacklistEntry("10.0.0.0/8", None))
        self.assertEqual(self.check("alice", "s3cret", ip="10.20.30.40"), "blacklisted")
        self.assertEqual(self.users.lookups, 0)
        self.assertEqual(self.check("alice", "s3cret", ip="11.0.0.1").name, "alice")

    def test_ipv4_mapped(self):
        """An IPv4-mapped IPv6 client address matches the IPv4 entry."""
        self.users.blacklist.append(BlacklistEntry("203.0.113.0/24", None))
        self.assertEqual(self.check("alice", "s3cret", ip="::ffff:203.0.113.5"), "blacklisted")

    def test_expiry(self):
        """An entry stops applying at its expiry time."""
        self.users.blacklist.append(BlacklistEntry("203.0.113.5/32", T0 + 100))
        self.assertEqual(self.check("alice", "s3cret", ip="203.0.113.5"), "blacklisted")
        self.clock.advance(100)
        self.assertEqual(self.check("alice", "s3cret", ip="203.0.113.5").name, "alice")

    def test_new_entries_applied_after_refresh(self):
        """An entry added by an operator applies within blacklistRefresh seconds."""
        self.check("alice", "s3cret", ip="203.0.113.5")
        self.users.blacklist.append(BlacklistEntry("203.0.113.5", None))
        self.clock.advance(10)
        self.assertEqual(self.check("alice", "s3cret", ip="203.0.113.5"), "blacklisted")


class TemporaryFailureTests(CheckerMixin, TestCase):
    """Storage problems are temporary errors, never successes and never bad-credential answers."""

    def test_user_database_down(self):
        """A failing user database gives a temporary error."""
        self.users.broken = True
        self.assertEqual(self.check("alice", "s3cret"), "temporary")

    def test_state_store_down(self):
        """A failing state store gives a temporary error."""
        self.auth.state = BrokenStore()
        self.assertEqual(self.check("alice", "s3cret"), "temporary")
