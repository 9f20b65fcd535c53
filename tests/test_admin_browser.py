"""
The admin web UI in a real browser: headless Chromium, driven by Selenium,
against a real C{twistd gomail} whose admin was made by the real command line.

What only a browser can show: that the page runs under the strict
Content-Security-Policy (no inline script or style: a violation is logged to
the console, and the test fails on any), that the cookie session with its CSRF
token works as the API expects (HttpOnly, Secure and SameSite=Strict cookies
over http://127.0.0.1, the token kept in memory and recovered from
GET /api/session after a reload), and that the pages draw what the API answers:
the dashboard's charts with the traffic the test made (real SMTP AUTH logins
and real messages), a user created, TOTP enrolled from the QR code's secret,
the auth log searched and exported as CSV.

Selenium's calls block: they run in a thread (deferToThread), so the reactor
keeps reading the server's output. Waits are explicit (WebDriverWait on a
condition), never sleeps. Screenshots of each page, on a desktop-sized window
and a phone-sized one, are saved in $GOMAIL_SCREENSHOTS, or else in
<trial temp dir>/admin-screenshots (the path is printed).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import shutil
import smtplib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import pyotp
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from gomail.admin import store
from gomail.auth import userdb
from gomail.configschema import Config
from tests.gomailprocess import ROOT, GomailNode
from tests.processes import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

CONFIG = """
dataDir = {data_json}
smtpHost = "127.0.0.1"
smtpPort = {smtp}
forwardSMTP = true
forwardHost = "127.0.0.1"
forwardPort = {dead}
[smtp]
hostname = "mx.example"
localDomains = ["example.com"]
allowPlaintextAuthLoopback = true
greetingDelay = 0
[spool]
minFreeSpaceMB = 0
[auth]
bcryptRounds = 4
[monitor]
listen = ["tcp:{monitor}:interface=127.0.0.1"]
[nginxAuth]
listen = ["tcp:{nginx}:interface=127.0.0.1"]
[admin]
listen = ["tcp:{admin}:interface=127.0.0.1"]
loginRateLimit = 1000
"""
# Fixed-port listeners of other services would collide between tests: off.
OFF = "".join(f"[{section}]\nenabled = false\n" for section in ("pop3", "imap")
              if section in {f.name for f in dataclasses.fields(Config)})
# secureCookie keeps its default (true): Chromium counts http://127.0.0.1 as a
# secure context and keeps Secure cookies from it, which the test proves by
# logging in at all.

ROOT_PASSWORD = "correct horse battery"
ALICE, ALICE_PASSWORD = "alice@example.com", "alice-Correct-horse-1"
CAROL, CAROL_PASSWORD = "carol@example.com", "carol-Battery-staple-2"
VIEWER, VIEWER_PASSWORD = "viewer", "viewer-Staple-horse-3"
MESSAGE = b"From: alice@example.com\r\nTo: alice@example.com\r\nSubject: seen on the dashboard\r\n\r\nHello.\r\n"
#: A recipient elsewhere: forwarded to a smarthost port where nothing listens, so it waits in the queue.
FAR_AWAY = "dave@remote.example"

#: The page the browser opens: the UI's address, GET /.
ENTRY = "/"
DESKTOP = (1366, 900)
PHONE = (390, 844)


def _plain(name: str, password: str) -> str:
    return base64.b64encode(f"\0{name}\0{password}".encode()).decode("ascii")


def smtp_traffic(port: int) -> None:
    """
    Real SMTP for the dashboard and the auth log (blocking): Alice logs in and
    sends three messages to her local mailbox and one that stays queued
    (deferred); a wrong password for Alice and an unknown user from another
    client IP fail.
    """
    for recipient in (ALICE, ALICE, ALICE, FAR_AWAY):
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.ehlo("client.test")
            code, text = client.docmd("AUTH", "PLAIN " + _plain(ALICE, ALICE_PASSWORD))
            assert code == 235, (code, text)
            refused = client.sendmail(ALICE, [recipient], MESSAGE)
            assert not refused, refused
    for name, password, source in ((ALICE, "not her password", "127.0.0.1"),
                                   ("mallory@example.com", "guess", "127.0.0.2")):
        with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(source, 0)) as client:
            client.ehlo("client.test")
            code, text = client.docmd("AUTH", "PLAIN " + _plain(name, password))
            assert code == 535, (code, text)


class Browser:
    """
    One headless Chromium (a fresh profile) on the admin UI at C{base}; every
    method blocks (run it in a thread).
    """

    def __init__(self, base: str, screenshots: str) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.base = base
        self.screenshots = screenshots
        self.profile = tempfile.mkdtemp(prefix="gomail-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                         "--disable-background-networking", "--disable-component-update", "--disable-sync",
                         f"--window-size={DESKTOP[0]},{DESKTOP[1]}", f"--user-data-dir={self.profile}"):
            options.add_argument(argument)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        self.driver.set_page_load_timeout(30)
        self.console: list[dict[str, Any]] = []

    def quit(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)

    # -- finding and waiting ---------------------------------------------------------

    def wait(self, condition: Callable[[Any], Any], timeout: float = 20, message: str = "") -> Any:
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait

        # Stale elements: the page replaced what the condition was reading; ask again.
        return WebDriverWait(self.driver, timeout, poll_frequency=0.1,
                             ignored_exceptions=(StaleElementReferenceException,)).until(condition, message)

    def visible(self, css: str, timeout: float = 20) -> Any:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec

        return self.wait(ec.visibility_of_element_located((By.CSS_SELECTOR, css)), timeout, f"{css} not visible")

    def clickable(self, css: str, timeout: float = 20) -> Any:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec

        return self.wait(ec.element_to_be_clickable((By.CSS_SELECTOR, css)), timeout, f"{css} not clickable")

    def button(self, text: str, timeout: float = 20) -> Any:
        """The visible, enabled button whose text is C{text}."""
        from selenium.webdriver.common.by import By

        def find(driver: Any) -> Any:
            for element in driver.find_elements(By.TAG_NAME, "button"):
                if element.text.strip() == text and element.is_displayed() and element.is_enabled():
                    return element
            return False

        return self.wait(find, timeout, f"no button {text!r}")

    def text_in(self, css: str, text: str, timeout: float = 20) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec

        self.wait(ec.text_to_be_present_in_element((By.CSS_SELECTOR, css), text), timeout,
                  f"{text!r} never appeared in {css}")

    def page(self, hash_route: str, heading: str) -> None:
        """Go to C{#/route} and wait for its heading (the page has loaded)."""
        self.driver.get(f"{self.base}{ENTRY}#/{hash_route}")
        self.loaded(heading)

    def loaded(self, heading: str) -> None:
        self.text_in("#main h1", heading)
        self.wait(lambda d: d.find_element("css selector", "#main").get_attribute("aria-busy") is None,
                  message="the page never finished loading")

    def typed(self, css: str, text: str) -> Any:
        element = self.visible(css)
        element.clear()
        element.send_keys(text)
        return element

    def shot(self, name: str) -> str:
        """A screenshot of the whole page (not only the window) as <name>.png."""
        path = os.path.join(self.screenshots, f"{name}.png")
        # The sticky header at the top, and no notices floating over the page.
        self.driver.execute_script("window.scrollTo(0, 0); document.getElementById('toasts')?.replaceChildren()")
        metrics = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}})
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        return path

    def phone(self) -> None:
        """Show the page as a phone would (390×844 CSS pixels, touch, the viewport meta tag honoured)."""
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": PHONE[0], "height": PHONE[1], "deviceScaleFactor": 2, "mobile": True})
        self.driver.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": True})

    def desktop(self) -> None:
        self.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        self.driver.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": False})

    def console_errors(self) -> list[str]:
        """
        The console's errors so far (CSP violations among them), but the 401s
        of the session routes a login page expects (no session yet, a wrong code).
        """
        self.console += self.driver.get_log("browser")
        expected = re.compile(r"/api/(session|refresh|login) - Failed to load resource: .* status of 401\b")
        return [e["message"] for e in self.console if e["level"] == "SEVERE" and not expected.search(e["message"])]

    def fetch(self, url: str) -> dict[str, Any]:
        """GET C{url} from the page (its cookies go with it): status, content type and text."""
        result: dict[str, Any] = self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch(arguments[0], {credentials: 'same-origin'}).then(async (r) => done("
            "{status: r.status, type: r.headers.get('Content-Type'), text: await r.text()}),"
            " (e) => done({status: 0, type: '', text: String(e)}));", url)
        return result


class AdminBrowserTests(TestCase):
    """The web UI, end to end, in headless Chromium."""

    timeout = 300

    def setUp(self) -> None:
        missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
        if missing:
            if os.environ.get("CI"):
                self.fail(f"{' and '.join(missing)} missing: CI needs the browser test (Debian: chromium chromium-driver)")
            raise SkipTest(f"{' and '.join(missing)} missing (Debian: apt-get install chromium chromium-driver)")
        try:
            import selenium  # noqa: F401
        except ImportError:
            if os.environ.get("CI"):
                self.fail("selenium is not installed: CI needs the browser test (pip install -e '.[test]')")
            raise SkipTest("selenium is not installed (pip install -e '.[test]')") from None
        self.screenshots = os.environ.get("GOMAIL_SCREENSHOTS") or os.path.abspath("admin-screenshots")
        os.makedirs(self.screenshots, exist_ok=True)
        print(f"\nadmin UI screenshots: {self.screenshots}")

    def gomail(self, *argv: str, stdin: str = "") -> subprocess.CompletedProcess:
        """The real command line (C{python -m gomail.cli}), with the server's configuration. Blocking."""
        env = {"PYTHONPATH": ROOT, "LC_ALL": "C.UTF-8", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        result = subprocess.run([sys.executable, "-m", "gomail.cli", *argv, "--config", self.node.config],
                                cwd=self.node.workdir, env=env, input=stdin, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, (argv, result.stdout, result.stderr)
        return result

    async def start_server(self) -> str:
        """A configured server with its admin (TOTP) and Alice, started: the admin UI's base URL."""
        ports = {name: free_port() for name in ("smtp", "monitor", "nginx", "admin", "dead")}
        self.node = GomailNode(self)
        self.node.write_config(CONFIG.format(data_json=json.dumps(self.node.data), **ports) + OFF)
        self.smtp_port = ports["smtp"]
        await deferToThread(self.gomail, "admin", "add", "root", "--role", "superadmin", "--password-stdin",
                            stdin=ROOT_PASSWORD + "\n")
        await deferToThread(self.gomail, "user", "add", ALICE, "--password-stdin", stdin=ALICE_PASSWORD + "\n")
        self.database = os.path.join(self.node.data, "gomail.db")
        self.totp_secret = pyotp.random_base32()
        conn = userdb.open_connection(self.database)
        try:
            userdb.transact(conn, store.set_totp, "root", self.totp_secret, time.time())
        finally:
            conn.close()
        await self.node.start()
        return f"http://127.0.0.1:{ports['admin']}"

    async def open_browser(self, base: str) -> Browser:
        browser: Browser = await deferToThread(Browser, base, self.screenshots)
        self.addCleanup(deferToThread, browser.quit)
        return browser

    def user_row(self, name: str) -> tuple[Any, ...]:
        conn = userdb.open_connection(self.database)
        try:
            row = conn.execute("SELECT enabled, totp_enabled FROM users WHERE name = ?", (name,)).fetchone()
            return tuple(row) if row else ()
        finally:
            conn.close()

    async def test_walkthrough(self) -> None:
        """
        The whole UI against a real server, as an operator uses it:

          - an admin made by the command line logs in with its password and
            a TOTP code (a wrong code first: refused, the form says so); the
            session cookie is HttpOnly and Secure, out of the page's reach;
          - the dashboard's charts draw the logins and messages the test sent
            (hour and day ranges), its tables name the failing user and IP;
          - after a reload the session and its CSRF token still work: a user
            is created from the form (in the database), found by the search,
            TOTP enrolled from the QR code's secret and confirmed with a code
            (in the database), an app password made and shown once;
          - the auth log is filtered (Enter submits, selects apply at once);
          - on a phone-sized screen the pages are no wider than the screen
            and the menu button opens the navigation;
          - an auditor is added, a blacklist entry added and removed after
            the confirmation dialog, the operations log shows those changes, a
            deferred message is deleted from the queue, Configuration and
            Profile load; the auth log's CSV export downloads with the cookie;
          - logging out returns to the login form for good; the auditor sees
            only the read-only pages and no queue actions, turns on its own
            TOTP, is sent back to the login form and needs a code from then on;
          - no console error all along (a CSP violation would be one).
        """
        base = await self.start_server()
        await deferToThread(smtp_traffic, self.smtp_port)
        browser = await self.open_browser(base)
        await self.step(browser, self.log_in)
        await self.step(browser, self.dashboard)
        await self.step(browser, self.create_user)
        self.assertEqual(self.user_row(CAROL), (1, 0))
        await self.step(browser, self.enrol_totp)
        self.assertEqual(self.user_row(CAROL), (1, 1))
        await self.step(browser, self.auth_log)
        await self.step(browser, self.on_a_phone)
        await self.step(browser, self.other_pages)
        await self.step(browser, self.csv_export)
        await self.step(browser, self.log_out)
        await self.step(browser, self.as_auditor)
        await self.step(browser, self.own_totp)
        self.assertEqual(await deferToThread(browser.console_errors), [])
        self.assertNotIn(b"Traceback", self.node.output)

    async def step(self, browser: Browser, step: Callable[[Browser], None]) -> None:
        """Run one step in a thread; when it fails, keep a screenshot and print the browser's console."""
        try:
            await deferToThread(step, browser)
        except BaseException:
            def evidence() -> None:
                print(f"failed step {step.__name__}: screenshot {browser.shot('failed-' + step.__name__)}")
                print(f"URL: {browser.driver.current_url}")
                for entry in browser.console + browser.driver.get_log("browser"):
                    print(f"console {entry['level']}: {entry['message']}")
            try:
                await deferToThread(evidence)
            finally:
                print(self.node.output.decode(errors="replace")[-4000:])
            raise

    # -- the steps (blocking: each runs in a thread) ---------------------------------------------

    def log_in(self, b: Browser) -> None:
        """The login form (username, password, TOTP code); Enter submits; the app and its menu appear."""
        from selenium.webdriver.common.keys import Keys

        b.driver.get(f"{b.base}{ENTRY}")
        b.wait(lambda d: "gomail admin" in d.title, message=f"GET {ENTRY} did not serve the web UI")
        b.visible("#login-form")
        b.shot("01-login")
        # A wrong code is refused, with the API's message shown in the form.
        b.typed("#login-username", "root")
        b.typed("#login-password", ROOT_PASSWORD)
        b.typed("#login-totp", "000000" if pyotp.TOTP(self.totp_secret).now() != "000000" else "111111")
        b.clickable("#login-submit").click()
        b.visible("#login-error")
        b.typed("#login-password", ROOT_PASSWORD)
        b.typed("#login-totp", pyotp.TOTP(self.totp_secret).now()).send_keys(Keys.ENTER)
        b.visible("#app-view")
        b.loaded("Dashboard")
        links = [a.text for a in b.driver.find_elements("css selector", "#nav-list a")]
        self.assertEqual(links, ["Dashboard", "Users", "Admins", "Blacklist", "Auth log", "Operations", "Queue",
                                 "Configuration"])
        cookies = {c["name"]: c for c in b.driver.get_cookies()}
        self.assertTrue(cookies["gomail_session"]["httpOnly"])
        self.assertTrue(cookies["gomail_session"]["secure"])
        self.assertFalse(b.driver.execute_script("return document.cookie.includes('gomail_session')"))

    def dashboard(self, b: Browser) -> None:
        """The charts draw data points for the logins and messages sent (live refresh brings late ones)."""

        def drawn(series: str) -> Callable[[Any], bool]:
            def check(driver: Any) -> bool:
                paths = driver.find_elements("css selector", f'path[data-series="{series}"]')
                return bool(paths) and int(paths[0].get_attribute("data-nonzero") or 0) > 0
            return check

        for series in ("logins_per_s", "messages_received", "messages_delivered"):
            b.wait(drawn(series), 60, f"the {series} chart never drew a non-zero point")
        for series in ("success_ratio", "latency_p50_ms", "latency_p99_ms", "queue_depth", "messages_deferred",
                       "messages_failed"):
            path = b.driver.find_element("css selector", f'path[data-series="{series}"]')
            self.assertGreater(int(path.get_attribute("data-points") or 0), 0, series)
        # The tables of failures name the wrong password's user and the guessing IP.
        b.text_in("#main", "mallory@example.com")
        b.text_in("#main", "127.0.0.2")
        # The day range draws too.
        b.button("Last day").click()
        b.wait(lambda d: "range=day" in d.current_url, message="the range is not in the address")
        b.wait(drawn("messages_received"), 30, "the day chart drew nothing")
        b.shot("02-dashboard-day")
        b.button("Last hour").click()
        b.wait(drawn("logins_per_s"), 30)
        b.shot("02-dashboard")
        b.driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {
            "features": [{"name": "prefers-color-scheme", "value": "dark"}]})
        b.shot("02-dashboard-dark")
        b.driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})

    def create_user(self, b: Browser) -> None:
        """After a reload (the CSRF token comes from GET /api/session), a user is created from the form."""
        from selenium.webdriver.common.keys import Keys

        b.page("users", "Users")
        b.driver.refresh()
        b.loaded("Users")
        b.text_in("#main table", ALICE)
        b.button("New user").click()
        b.typed("#new-user-form input[name=name]", CAROL)
        b.typed("#new-user-form input[name=password]", CAROL_PASSWORD)
        b.typed("#new-user-form textarea[name=allowed_senders]", "carol@example.com\n@example.org")
        b.shot("03-users-new")
        b.visible("#new-user-form input[name=password]").send_keys(Keys.ENTER)
        b.loaded(CAROL)
        self.assertIn("#/users/carol%40example.com", b.driver.current_url)
        # The list's search finds her.
        b.page("users", "Users")
        b.typed("#main input[name=search]", "carol").send_keys(Keys.ENTER)
        b.wait(lambda d: ALICE not in d.find_element("css selector", "#main .results").text
               and CAROL in d.find_element("css selector", "#main .results").text, message="search did not filter")
        b.shot("03-users")

    def enrol_totp(self, b: Browser) -> None:
        """Enrol: the QR code shows (a data: image under the CSP), the secret's code confirms it."""
        from selenium.webdriver.common.keys import Keys

        b.page("users/carol%40example.com", CAROL)
        b.clickable("#totp-enrol").click()
        qr = b.visible("#totp-qr")
        self.assertTrue(qr.get_attribute("src").startswith("data:image/svg+xml;base64,"))
        b.wait(lambda d: d.execute_script("const i = document.getElementById('totp-qr');"
                                          "return i.complete && i.naturalWidth > 0"), message="the QR image did not load")
        secret = b.visible("#totp-secret").text.replace(" ", "")
        b.shot("04-user-totp-qr")
        b.typed("#totp-code", pyotp.TOTP(secret).now()).send_keys(Keys.ENTER)
        b.text_in("#user-totp", "TOTP is on")
        b.text_in("#main .facts", "on")
        # An app password is shown once.
        b.typed("#user-app-passwords input[name=label]", "phone").send_keys(Keys.ENTER)
        b.text_in("#user-app-passwords .once", 'App password "phone"')
        b.text_in("#user-app-passwords table", "phone")
        b.shot("04-user")

    def auth_log(self, b: Browser) -> None:
        """The auth log filtered by user and result; its CSV export carries the same filters."""
        from selenium.webdriver.common.keys import Keys
        from selenium.webdriver.support.ui import Select

        b.page("logs/auth", "Auth log")
        b.typed("#auth-user", ALICE).send_keys(Keys.ENTER)

        def rows(driver: Any) -> list[list[str]]:
            return [[td.text for td in tr.find_elements("css selector", "td")]
                    for tr in driver.find_elements("css selector", "#auth-results tbody tr")]

        b.wait(lambda d: rows(d) and all(r[1] == ALICE for r in rows(d))
               and {r[4] for r in rows(d)} == {"success", "failure"}, message="the user filter did not apply")
        Select(b.visible("#auth-result")).select_by_value("failure")
        b.wait(lambda d: [r[4] for r in rows(d)] == ["failure"], message="the result filter did not apply")
        self.assertIn("result=failure", b.driver.current_url)
        b.shot("05-auth-log")
        self.csv_link = b.visible("#auth-csv").get_attribute("href")

    def csv_export(self, b: Browser) -> None:
        """The auth log's CSV link (the filters of the page it was on) downloads with the session cookie."""
        href = self.csv_link
        self.assertIn("format=csv", href)
        self.assertIn("user=alice%40example.com", href)
        self.assertIn("result=failure", href)
        answer = b.fetch(href)
        self.assertEqual(answer["status"], 200, answer)
        self.assertIn("text/csv", answer["type"])
        self.assertIn(ALICE, answer["text"])
        self.assertNotIn(",success,", answer["text"])

    def on_a_phone(self, b: Browser) -> None:
        """At 390×844 the menu button opens the navigation; pages are no wider than the screen."""
        b.phone()
        try:
            for route, heading, name in (("dashboard", "Dashboard", "06-phone-dashboard"),
                                         ("users/carol%40example.com", CAROL, "06-phone-user"),
                                         ("logs/auth?user=alice%40example.com", "Auth log", "06-phone-auth-log")):
                b.page(route, heading)
                if route == "dashboard":
                    b.wait(lambda d: d.find_elements("css selector", 'path[data-series="logins_per_s"]'))
                overflow = b.driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
                self.assertLessEqual(overflow, 0, f"{route} is wider than the phone's screen")
                b.shot(name)
            self.assertFalse(b.visible("#menu-toggle").get_attribute("aria-expanded") == "true")
            b.clickable("#menu-toggle").click()
            b.visible("#nav-list")
            b.shot("06-phone-menu")
            b.clickable('#nav-list a[href="#/users"]').click()
            b.loaded("Users")
            self.assertFalse(b.driver.find_element("css selector", "#nav-list").is_displayed())
        finally:
            b.desktop()

    def log_out(self, b: Browser) -> None:
        """Log out: the login form again, and the session is gone (a reload stays on the form)."""
        b.clickable("#logout").click()
        b.visible("#login-form")
        b.text_in("#login-notice", "logged out")
        b.driver.get(f"{b.base}{ENTRY}#/users")
        b.visible("#login-form")
        self.assertFalse(b.driver.find_element("css selector", "#app-view").is_displayed())

    def other_pages(self, b: Browser) -> None:
        """
        The other pages work too: an auditor added on Admins; a blacklist
        entry added and removed (after the confirmation dialog); the
        operations log shows those changes; Queue, Configuration and Profile load.
        """
        from selenium.webdriver.common.keys import Keys
        from selenium.webdriver.support.ui import Select

        b.page("admins", "Admins")
        b.typed("#main input[name=name]", VIEWER)
        Select(b.visible("#main select[name=role]")).select_by_value("auditor")
        b.typed("#main input[name=password]", VIEWER_PASSWORD).send_keys(Keys.ENTER)
        b.text_in("#main table", VIEWER)
        b.shot("07-admins")

        b.page("blacklist", "Blacklist")
        b.typed("#main input[name=network]", "192.0.2.0/24")
        b.typed("#main input[name=reason]", "seen guessing")
        Select(b.visible("#main select[name=expires_in]")).select_by_value("86400")
        b.button("Add to the blacklist").click()
        b.text_in("#blacklist-list", "seen guessing")
        b.shot("08-blacklist")
        b.clickable('#blacklist-list button[aria-label="Remove 192.0.2.0/24"]').click()
        b.clickable("#confirm-ok").click()
        b.text_in("#blacklist-list", "The blacklist is empty.")

        b.page("logs/operations", "Operations log")
        for text in (CAROL, VIEWER, "192.0.2.0/24"):
            b.text_in("#operations-results", text)
        b.shot("09-operations")

        b.page("queue", "Queue")
        b.text_in("#queue-counts", "1 queued")
        b.text_in("#main table", FAR_AWAY)
        b.button("Flush (deliver now)")
        b.shot("10-queue")
        b.clickable("#main table button.danger").click()
        b.clickable("#confirm-ok").click()
        b.text_in("#main .results", "The queue is empty.")

        b.page("config", "Configuration")
        b.visible("#config-live .config-row")
        b.typed("#settings-filter", "smtp.hostname")
        b.text_in("#main", "mx.example")
        b.shot("11-config")

        b.page("profile", "Your profile")
        b.text_in("#main .facts", "superadmin")
        b.shot("12-profile")

    def as_auditor(self, b: Browser) -> None:
        """An auditor (no TOTP: the code field left empty) sees only what it may: read-only pages, no queue actions."""
        b.typed("#login-username", VIEWER)
        b.typed("#login-password", VIEWER_PASSWORD).submit()
        # Back where the session ended (#/users), which is not for auditors.
        b.loaded("Users")
        b.text_in("#main", "This page needs the admin role")
        links = [a.text for a in b.driver.find_elements("css selector", "#nav-list a")]
        self.assertEqual(links, ["Dashboard", "Auth log", "Operations", "Queue"])
        b.page("queue", "Queue")
        self.assertEqual([e.text for e in b.driver.find_elements("css selector", "#main button")
                          if e.text in ("Flush (deliver now)", "Retry failed")], [])
        b.page("dashboard", "Dashboard")
        b.shot("13-auditor")

    def own_totp(self, b: Browser) -> None:
        """
        The auditor turns on its own TOTP on its profile (current password,
        QR code, a code): its sessions end, the login form says so, and the
        next login needs a code.
        """
        from selenium.webdriver.common.keys import Keys

        b.page("profile", "Your profile")
        b.typed("#profile-totp input[name=current_password]", VIEWER_PASSWORD).send_keys(Keys.ENTER)
        b.wait(lambda d: d.execute_script("const i = document.querySelector('#profile-totp img.qr');"
                                          "return i !== null && i.complete && i.naturalWidth > 0"),
               message="the QR image did not load")
        secret = b.visible("#profile-totp .secret").text.replace(" ", "")
        b.shot("14-profile-totp")
        b.typed("#profile-totp input[name=code]", pyotp.TOTP(secret).now()).send_keys(Keys.ENTER)
        b.visible("#login-form")
        b.text_in("#login-notice", "log in again with a code")
        b.typed("#login-username", VIEWER)
        b.typed("#login-password", VIEWER_PASSWORD).submit()
        b.visible("#login-error")
        b.typed("#login-password", VIEWER_PASSWORD)
        # The next time step's code: the one just used is spent (no replay).
        b.typed("#login-totp", pyotp.TOTP(secret).at(time.time() + 30)).submit()
        b.loaded("Your profile")
        b.text_in("#main .facts", "yes")
        b.clickable("#logout").click()
        b.visible("#login-form")
