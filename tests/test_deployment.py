# -*- test-case-name: tests.test_deployment -*-
"""
The deployment files: Dockerfile, docker-compose.yml, conf/docker/, and the
systemd unit. Docker cannot run here, so what can be checked is: the image
installs the package as the README says, every file the two reference
exists, the compose file parses and wires the services together, nginx
accepts the proxy's configuration, systemd accepts the unit, and the
image's command line starts gomail on this machine and stops cleanly.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import smtplib
import socket
import subprocess
import sys

import yaml
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from tests.gomailprocess import GomailNode
from tests.processes import TWISTD, ServerProcess, free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def repo_file(*parts: str) -> str:
    with open(os.path.join(REPO, *parts)) as f:
        return f.read()


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(instruction, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", repo_file("Dockerfile"))
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


class DockerfileTests(SynchronousTestCase):
    """The top-level Dockerfile."""

    def test_copied_files_exist(self) -> None:
        """Every file or directory the image copies from the repository is there."""
        copied = [argument for instruction, argument in dockerfile_instructions() if instruction == "COPY"]
        self.assertTrue(copied)
        for argument in copied:
            sources = [word for word in shlex.split(argument) if not word.startswith("--")][:-1]
            for source in sources:
                self.assertTrue(os.path.exists(os.path.join(REPO, source)), source)

    def test_installs_as_the_readme_says(self) -> None:
        """The image installs with the README's deployment command, runs as a non-root user, checks /health."""
        instructions = dockerfile_instructions()
        runs = " ".join(argument for instruction, argument in instructions if instruction == "RUN")
        self.assertIn("pip install .", repo_file("README.md"))
        self.assertIn("pip install .", runs)
        user = [argument for instruction, argument in instructions if instruction == "USER"]
        self.assertEqual(user, ["gomail"])
        [healthcheck] = [argument for instruction, argument in instructions if instruction == "HEALTHCHECK"]
        self.assertIn("/health", healthcheck)
        self.assertIn("STOPSIGNAL", dict(instructions))

    def test_image_configuration_is_valid(self) -> None:
        """The configuration the image ships passes gomail check-config."""
        result = subprocess.run([sys.executable, "-m", "gomail.cli",
                                 "check-config", os.path.join(REPO, "conf", "docker", "gomail.toml")],
                                capture_output=True, text=True, timeout=60, check=False)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("configuration ok", result.stdout)


class ImageCommandTests(TestCase):
    """The image's command line, run on this machine."""

    timeout = 60

    def test_command_starts_gomail(self) -> None:
        """The Dockerfile's CMD (with the image's configuration, spool and ports moved here) starts gomail and stops cleanly."""
        [command] = [argument for instruction, argument in dockerfile_instructions() if instruction == "CMD"]
        argv = yaml.safe_load(command)  # JSON form: a YAML flow sequence
        self.assertEqual(argv[:5], ["twistd", "-n", "--pidfile=", "gomail", "--config"])
        config = repo_file("conf", "docker", "gomail.toml")
        smtp, auth, health = free_port(), free_port(), free_port()
        config = (config.replace('dataDir = "/app/emails"', 'dataDir = "{data}"')
                  .replace("smtpPort = 2525", f"smtpPort = {smtp}")
                  .replace("healthCheckPort = 8025", f"healthCheckPort = {health}")
                  .replace("tcp:8090:interface=0.0.0.0", f"tcp:{auth}:interface=127.0.0.1")
                  .replace('smtpHost = "0.0.0.0"', 'smtpHost = "127.0.0.1"'))
        self.assertEqual(config.count("{data}"), 1)
        node = GomailNode(self, config.replace("{", "{{").replace("}", "}}").replace("{{data}}", "{data}"))

        async def run() -> None:
            await node.start()
            await node.stop_cleanly()
        return ensureDeferred(run())


class ComposeTests(SynchronousTestCase):
    """docker-compose.yml and the nginx configuration it mounts."""

    def setUp(self) -> None:
        self.compose = yaml.safe_load(repo_file("docker-compose.yml"))

    def test_services_and_health_checks(self) -> None:
        """gomail, Redis and nginx, each health-checked; gomail waits for Redis, nginx for gomail; named volumes."""
        services = self.compose["services"]
        self.assertEqual(set(services), {"gomail", "redis", "nginx"})
        for name, service in services.items():
            self.assertIn("healthcheck", service, name)
        self.assertEqual(services["gomail"]["depends_on"]["redis"]["condition"], "service_healthy")
        self.assertEqual(services["nginx"]["depends_on"]["gomail"]["condition"], "service_healthy")
        self.assertEqual(services["gomail"]["build"], ".")
        self.assertEqual(set(self.compose["volumes"]), {"gomail-spool", "redis-data"})

    def test_mounted_files_exist(self) -> None:
        """Every file of the repository the compose file mounts is there."""
        for name, service in self.compose["services"].items():
            for volume in service.get("volumes", []):
                source = volume.split(":")[0]
                if source.startswith("."):
                    self.assertTrue(os.path.exists(os.path.join(REPO, source)), (name, source))

    def test_gomail_reaches_redis_and_nginx_reaches_gomail(self) -> None:
        """gomail's state store is the redis service; nginx's auth_http is gomail's listener, with the shared secret."""
        environment = self.compose["services"]["gomail"]["environment"]
        self.assertEqual(environment["GOMAIL_REDIS_URL"], "redis://redis:6379/0")
        self.assertIn("GOMAIL_SHARED_SECRET", environment["GOMAIL_NGINXAUTH_SHAREDSECRET"])
        nginx = repo_file("conf", "docker", "nginx.conf")
        self.assertIn("auth_http gomail:8090/api/auth;", nginx)
        self.assertIn("tcp:8090:interface=0.0.0.0", repo_file("conf", "docker", "gomail.toml"))
        self.assertIn('auth_http_header X-Auth-Key "${GOMAIL_SHARED_SECRET}";', nginx)

    def test_gomail_accepts_the_environment(self) -> None:
        """The variables compose gives gomail are keys gomail knows, with valid values, over the image's file."""
        environment = {name: re.sub(r"\$\{[^}]*\}", "compose-secret", str(value))
                       for name, value in self.compose["services"]["gomail"]["environment"].items()}
        env = {"PATH": os.environ.get("PATH", ""), **environment}
        result = subprocess.run([sys.executable, "-m", "gomail.cli", "check-config",
                                 os.path.join(REPO, "conf", "docker", "gomail.toml")],
                                capture_output=True, text=True, timeout=60, check=False, env=env)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("configuration ok", result.stdout)

    def test_nginx_accepts_the_configuration(self) -> None:
        """nginx -t accepts the mail proxy's configuration (the secret filled in, gomail's name as an address)."""
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        module = "/usr/lib/nginx/modules/ngx_mail_module.so"
        if not os.path.exists(nginx) or not os.path.exists(module):
            raise SkipTest("nginx with its mail module is not installed (.ci/run installs it)")
        text = (repo_file("conf", "docker", "nginx.conf").replace("gomail:8090", "127.0.0.1:8090")
                .replace("load_module modules/", "load_module /usr/lib/nginx/modules/")
                .replace("${GOMAIL_SHARED_SECRET}", "secret"))
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(text + f"\npid {path}.pid;\nerror_log stderr;\n")
        result = subprocess.run([nginx, "-t", "-c", path], capture_output=True, text=True, timeout=30, check=False)
        self.assertEqual(result.returncode, 0, result.stderr)


class SystemdUnitTests(SynchronousTestCase):
    """conf/gomail.service and conf/gomail.socket."""

    def test_hardened(self) -> None:
        """The unit runs twistd in the foreground as gomail, with the hardening the README lists."""
        unit = repo_file("conf", "gomail.service")
        for line in ("User=gomail", "NoNewPrivileges=yes", "ProtectSystem=strict", "ReadWritePaths=/var/lib/gomail",
                     "AmbientCapabilities=CAP_NET_BIND_SERVICE", "KillSignal=SIGTERM"):
            self.assertIn(line + "\n", unit)
        self.assertRegex(unit, r"ExecStart=\S+/twistd --nodaemon --pidfile= gomail --config \S+")

    def test_systemd_accepts_it(self) -> None:
        """systemd-analyze verify finds nothing to say about the service and socket units (an unknown key would be reported)."""
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise SkipTest("systemd-analyze is not installed")
        # ExecStart must name an existing program: this Python, with twistd's arguments after it.
        unit = re.sub(r"ExecStart=\S+/twistd", f"ExecStart={sys.executable} -m twisted", repo_file("conf", "gomail.service"))
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "gomail.service")
        with open(path, "w") as f:
            f.write(unit)
        socket_unit = os.path.join(directory, "gomail.socket")
        shutil.copy(os.path.join(REPO, "conf", "gomail.socket"), socket_unit)
        result = subprocess.run([analyze, "verify", path, socket_unit], capture_output=True, text=True, timeout=60,
                                check=False)
        self.assertEqual((result.returncode, result.stdout + result.stderr), (0, ""))


class SocketActivationTests(TestCase):
    """systemd socket activation: the listening socket is inherited, as conf/gomail.socket passes it."""

    timeout = 60

    def test_inherited_socket_serves_smtp(self) -> None:
        """
        twistd gomail --smtp systemd:domain=INET:name=smtp, started with a
        listening socket as descriptor 3 and LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES set as
        systemd sets them, accepts mail on that socket, then stops cleanly.
        """
        listening = socket.socket()
        self.addCleanup(listening.close)
        listening.bind(("127.0.0.1", 0))
        listening.listen(16)
        port = listening.getsockname()[1]
        node = GomailNode(self, ACTIVATED_CONFIG, auth_port=free_port())
        process = ServerProcess()
        # LISTEN_PID must be the server's own pid: the shell sets it to its own, then execs twistd.
        argv = ["/bin/sh", "-c", 'LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=smtp exec "$@"', "sh", *TWISTD, "-n", "--pidfile=",
                "gomail", "--config", node.config, "--smtp", "systemd:domain=INET:name=smtp"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        reactor.spawnProcess(process, argv[0], argv, env=env, path=node.workdir,
                             childFDs={0: "w", 1: "r", 2: "r", 3: listening.fileno()})
        self.addCleanup(process.stop, reactor)

        async def run() -> None:
            await process.wait_for(b"gomail ready", reactor)
            reply = await deferToThread(send_one, port)
            self.assertEqual(reply[0], 250)
            code = await process.stop(reactor)
            self.assertIn(code, (0, -15), process.output.decode(errors="replace"))
            self.assertNotIn(b"Traceback", process.output)
        return ensureDeferred(run())


ACTIVATED_CONFIG = """
dataDir = "{data}"
enableHealthCheck = false
[security]
requireAuth = false
allowLocalOnly = true
[nginxAuth]
listen = ["tcp:{auth_port}:interface=127.0.0.1"]
"""


def send_one(port: int) -> tuple[int, bytes]:
    """(blocking) One message over SMTP to 127.0.0.1:C{port}; the reply to its DATA."""
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.ehlo("client.test")
        client.mail("alice@example.org")
        client.rcpt("bob@example.com")
        return client.data(b"Subject: activated\r\n\r\nhello\r\n")
