"""
Tests for L{gomail.configload} and L{gomail.configschema}: every key of the Go relay
loads from TOML and from its C{config.json}, environment variables override,
and every mistake is one line naming the source and the key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from gomail.configload import ConfigError, describe, env_name, load_config, tcp_endpoint
from gomail.configschema import Config, Provider

SHIPPED_CONFIG = FilePath(__file__).parent().sibling("conf").child("gomail.toml").path

#: Every key of the Go relay, each with a value that is not its default.
GO_DOCUMENT: dict[str, Any] = {
    "smtpHost": "0.0.0.0",
    "smtpPort": 2525,
    "defaultUsername": "admin",
    "defaultPassword": "default-pw-4711",
    "forwardSMTP": True,
    "forwardHost": "smtp.example.com",
    "forwardPort": 465,
    "forwardUsername": "relay-user",
    "forwardPassword": "forward-pw-0815",
    "forwardSSL": True,
    "forwardProviders": [
        {"host": "backup.example.net", "port": 2587, "username": "backup",
         "password": "provider-pw-42", "ssl": True, "priority": 5},
        {"host": "last.example.org"},
    ],
    "batchSize": 50,
    "batchDelay": 250,
    "continueOnError": False,
    "workerCount": 9,
    "queueSize": 77,
    "processingTimeout": 30,
    "enableHealthCheck": False,
    "healthCheckPort": 9025,
    "rateLimits": {"enabled": True, "maxPerHour": 11, "maxPerDay": 22,
                   "globalMaxPerHour": 33, "globalMaxPerDay": 44},
    "security": {"allowLocalOnly": False, "logAllEmails": False, "requireAuth": False},
}

#: The values GO_DOCUMENT should load as, by dotted key.
GO_VALUES: dict[str, Any] = {
    "smtpHost": "0.0.0.0",
    "smtpPort": 2525,
    "defaultUsername": "admin",
    "defaultPassword": "default-pw-4711",
    "forwardSMTP": True,
    "forwardHost": "smtp.example.com",
    "forwardPort": 465,
    "forwardUsername": "relay-user",
    "forwardPassword": "forward-pw-0815",
    "forwardSSL": True,
    "forwardProviders": (
        Provider(host="backup.example.net", port=2587, username="backup",
                 password="provider-pw-42", ssl=True, priority=5),
        Provider(host="last.example.org", port=587, username="", password="", ssl=False, priority=0),
    ),
    "batchSize": 50,
    "batchDelay": 250,
    "continueOnError": False,
    "workerCount": 9,
    "queueSize": 77,
    "processingTimeout": 30,
    "enableHealthCheck": False,
    "healthCheckPort": 9025,
    "rateLimits.enabled": True,
    "rateLimits.maxPerHour": 11,
    "rateLimits.maxPerDay": 22,
    "rateLimits.globalMaxPerHour": 33,
    "rateLimits.globalMaxPerDay": 44,
    "security.allowLocalOnly": False,
    "security.logAllEmails": False,
    "security.requireAuth": False,
}

#: The Go relay's documented defaults.
SEED_DEFAULTS: dict[str, Any] = {
    "smtpHost": "127.0.0.1",
    "smtpPort": 25,
    "defaultUsername": "",
    "defaultPassword": "",
    "forwardSMTP": False,
    "forwardHost": "",
    "forwardPort": 587,
    "forwardUsername": "",
    "forwardPassword": "",
    "forwardSSL": False,
    "forwardProviders": (),
    "batchSize": 20,
    "batchDelay": 1000,
    "continueOnError": True,
    "workerCount": 5,
    "queueSize": 1000,
    "processingTimeout": 300,
    "enableHealthCheck": True,
    "healthCheckPort": 8025,
    "rateLimits.enabled": False,
    "rateLimits.maxPerHour": 500,
    "rateLimits.maxPerDay": 2000,
    "rateLimits.globalMaxPerHour": 1000,
    "rateLimits.globalMaxPerDay": 5000,
    "security.allowLocalOnly": True,
    "security.logAllEmails": True,
    "security.requireAuth": True,
}

#: The Go relay's environment variables: variable -> (key, text, loaded value).
LEGACY_ENVIRONMENT: dict[str, tuple[str, str, Any]] = {
    "SMTP_HOST": ("smtpHost", "10.1.2.3", "10.1.2.3"),
    "SMTP_PORT": ("smtpPort", "2526", 2526),
    "DEFAULT_USERNAME": ("defaultUsername", "root", "root"),
    "DEFAULT_PASSWORD": ("defaultPassword", "env-default-pw", "env-default-pw"),
    "FORWARD_SMTP": ("forwardSMTP", "false", False),
    "FORWARD_HOST": ("forwardHost", "env.example.com", "env.example.com"),
    "FORWARD_PORT": ("forwardPort", "2465", 2465),
    "FORWARD_USERNAME": ("forwardUsername", "env-user", "env-user"),
    "FORWARD_PASSWORD": ("forwardPassword", "env-forward-pw", "env-forward-pw"),
    "FORWARD_SSL": ("forwardSSL", "0", False),
}


def value_of(config: Config, dotted: str) -> Any:
    """The value of a dotted key in a loaded configuration."""
    value: Any = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def toml_value(value: Any) -> str:
    """A TOML literal for a string, number, boolean or list of those."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(value)


def to_toml(document: Mapping[str, Any]) -> str:
    """
    A TOML text for a document of top-level keys, tables of keys and arrays of
    tables (all gomail's configuration needs).
    """
    lines = [f"{key} = {toml_value(value)}" for key, value in document.items()
             if not isinstance(value, dict) and not (isinstance(value, list) and value and isinstance(value[0], dict))]
    for key, value in document.items():
        if isinstance(value, dict):
            lines.append(f"[{key}]")
            lines.extend(f"{k} = {toml_value(v)}" for k, v in value.items())
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for table in value:
                lines.append(f"[[{key}]]")
                lines.extend(f"{k} = {toml_value(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"


class ConfigTestMixin:
    """Helpers to write configuration files into a temporary directory and load them."""

    def write(self, name: str, text: str | bytes) -> str:
        directory = self.mktemp()  # type: ignore[attr-defined]
        os.makedirs(directory)
        path = os.path.join(directory, name)
        with open(path, "wb") as f:
            f.write(text.encode("utf-8") if isinstance(text, str) else text)
        return path

    def write_toml(self, document: Mapping[str, Any]) -> str:
        return self.write("gomail.toml", to_toml(document))

    def write_json(self, document: Mapping[str, Any]) -> str:
        return self.write("config.json", json.dumps(document))

    def load(self, path: str | None = None, environ: Mapping[str, str] | None = None) -> Config:
        return load_config(path, environ={} if environ is None else environ)

    def load_error(self, path: str | None, environ: Mapping[str, str] | None = None) -> str:
        """Load, expecting a ConfigError; return its text after checking it is one line."""
        error = self.assertRaises(ConfigError, load_config, path, {} if environ is None else environ)  # type: ignore[attr-defined]
        text = str(error)
        self.assertNotIn("\n", text)  # type: ignore[attr-defined]
        self.assertNotIn("\r", text)  # type: ignore[attr-defined]
        return text


class GoKeysTests(ConfigTestMixin, SynchronousTestCase):
    """The Go relay's keys, from TOML and from its config.json, with its defaults."""

    def assertLoaded(self, config: Config, expected: Mapping[str, Any]) -> None:
        for dotted, value in expected.items():
            self.assertEqual(value_of(config, dotted), value, f"key {dotted}")

    def test_every_go_key_from_toml(self) -> None:
        """Every Go relay key set in a TOML file arrives in the Config with the file's value."""
        self.assertLoaded(self.load(self.write_toml(GO_DOCUMENT)), GO_VALUES)

    def test_every_go_key_from_config_json(self) -> None:
        """The Go relay's config.json (camelCase keys, nested rateLimits/security) loads as-is."""
        self.assertLoaded(self.load(self.write_json(GO_DOCUMENT)), GO_VALUES)

    def test_the_test_documents_cover_every_key(self) -> None:
        """GO_VALUES and SEED_DEFAULTS name the same keys, so no key goes untested."""
        self.assertEqual(set(GO_VALUES), set(SEED_DEFAULTS))
        for dotted, value in GO_VALUES.items():
            self.assertNotEqual(value, SEED_DEFAULTS[dotted], f"{dotted} is set to its default")

    def test_defaults_without_a_file(self) -> None:
        """With no file and no environment every Go key has the seed's default."""
        self.assertLoaded(self.load(None), SEED_DEFAULTS)

    def test_defaults_from_an_empty_toml_file(self) -> None:
        """An empty TOML file gives the seed's defaults."""
        self.assertLoaded(self.load(self.write("gomail.toml", "")), SEED_DEFAULTS)

    def test_defaults_from_an_empty_config_json(self) -> None:
        """A config.json of C{{}} gives the seed's defaults."""
        self.assertLoaded(self.load(self.write_json({})), SEED_DEFAULTS)

    def test_absent_keys_keep_defaults_beside_given_ones(self) -> None:
        """A file setting one key of a section leaves the section's other keys at their defaults."""
        config = self.load(self.write_json({"smtpPort": 2500, "rateLimits": {"maxPerHour": 7}}))
        self.assertEqual(config.smtpPort, 2500)
        self.assertEqual(config.rateLimits.maxPerHour, 7)
        expected = {k: v for k, v in SEED_DEFAULTS.items() if k not in ("smtpPort", "rateLimits.maxPerHour")}
        self.assertLoaded(config, expected)

    def test_shipped_configuration_loads(self) -> None:
        """conf/gomail.toml, the documented example, loads and means what its comments say."""
        config = self.load(SHIPPED_CONFIG)
        self.assertEqual(config.smtpPort, 2525)
        self.assertEqual(config.smtp.listen, ("tcp:2525:interface=127.0.0.1",))
        self.assertFalse(config.security.requireAuth)
        self.assertTrue(config.security.allowLocalOnly)
        self.assertEqual(config.smtp.trustedNetworks, ("127.0.0.0/8", "::1/128"))
        self.assertEqual(config.spool.directory, os.path.abspath(os.path.join("data", "spool")))

    def test_forward_providers_table_array(self) -> None:
        """[[forwardProviders]] tables load in order, with per-provider defaults for absent keys."""
        path = self.write("gomail.toml", '[[forwardProviders]]\nhost = "a.example"\npriority = 2\n'
                                         '[[forwardProviders]]\nhost = "b.example"\nport = 25\nssl = true\n')
        self.assertEqual(self.load(path).forwardProviders, (
            Provider(host="a.example", priority=2),
            Provider(host="b.example", port=25, ssl=True),
        ))

    def test_forward_smtp_with_providers_only(self) -> None:
        """forwardSMTP = true is valid without forwardHost when forwardProviders are given."""
        config = self.load(self.write_json({"forwardSMTP": True, "forwardProviders": [{"host": "p.example"}]}))
        self.assertTrue(config.forwardSMTP)
        self.assertEqual(config.forwardHost, "")


class DerivedValuesTests(ConfigTestMixin, SynchronousTestCase):
    """Values the loader works out from others."""

    def test_listen_defaults_to_smtp_host_and_port(self) -> None:
        """Without smtp.listen gomail listens on smtpHost:smtpPort, as the Go relay did."""
        config = self.load(self.write_json({"smtpHost": "192.0.2.1", "smtpPort": 2525}))
        self.assertEqual(config.smtp.listen, ("tcp:2525:interface=192.0.2.1",))

    def test_ipv6_smtp_host_is_escaped(self) -> None:
        """An IPv6 smtpHost has its colons escaped so the endpoint string parses."""
        self.assertEqual(tcp_endpoint("::1", 25), "tcp:25:interface=\\:\\:1")
        config = self.load(None, {"SMTP_HOST": "::1"})
        self.assertEqual(config.smtp.listen, ("tcp:25:interface=\\:\\:1",))

    def test_listen_replaces_host_and_port(self) -> None:
        """A non-empty smtp.listen is used as given."""
        config = self.load(self.write_toml({"smtp": {"listen": ["tcp:2526", "unix:/tmp/gomail.sock"]}}))
        self.assertEqual(config.smtp.listen, ("tcp:2526", "unix:/tmp/gomail.sock"))

    def test_paths_are_absolute(self) -> None:
        """dataDir becomes absolute and the spool defaults to <dataDir>/spool."""
        config = self.load(self.write_json({"dataDir": "relative/data"}))
        self.assertEqual(config.dataDir, os.path.abspath("relative/data"))
        self.assertEqual(config.spool.directory, os.path.join(os.path.abspath("relative/data"), "spool"))

    def test_explicit_spool_directory(self) -> None:
        """spool.directory, when set, wins over <dataDir>/spool."""
        config = self.load(self.write_toml({"spool": {"directory": "/var/spool/gomail"}}))
        self.assertEqual(config.spool.directory, "/var/spool/gomail")

    def test_hostname_defaults_to_something(self) -> None:
        """An empty smtp.hostname is replaced by this host's name; a given one is kept."""
        self.assertTrue(self.load(None).smtp.hostname)
        self.assertEqual(self.load(self.write_toml({"smtp": {"hostname": "mx.example"}})).smtp.hostname, "mx.example")


class EnvironmentTests(ConfigTestMixin, SynchronousTestCase):
    """Environment variables override the file."""

    def test_each_go_variable_wins_over_the_file(self) -> None:
        """Each of the Go relay's variables, set alone, overrides its key from the file."""
        path = self.write_toml(GO_DOCUMENT)
        for variable, (key, text, value) in LEGACY_ENVIRONMENT.items():
            config = self.load(path, {variable: text})
            self.assertEqual(getattr(config, key), value, variable)

    def test_all_go_variables_together(self) -> None:
        """All of the Go relay's variables at once override the file and leave other keys alone."""
        environ = {variable: text for variable, (_, text, _) in LEGACY_ENVIRONMENT.items()}
        config = self.load(self.write_json(GO_DOCUMENT), environ)
        for variable, (key, _, value) in LEGACY_ENVIRONMENT.items():
            self.assertEqual(getattr(config, key), value, variable)
        self.assertEqual(config.batchSize, 50)

    def test_go_variables_without_a_file(self) -> None:
        """The Go relay's variables apply over the defaults when there is no file."""
        config = self.load(None, {"SMTP_PORT": "2626", "FORWARD_SMTP": "yes", "FORWARD_HOST": "relay.example"})
        self.assertEqual((config.smtpPort, config.forwardSMTP, config.forwardHost), (2626, True, "relay.example"))

    def test_generic_variables(self) -> None:
        """GOMAIL_<SECTION>_<KEY> reaches every kind of key: top-level, sections, lists."""
        config = self.load(self.write_toml(GO_DOCUMENT), {
            "GOMAIL_BATCHSIZE": "3",
            "GOMAIL_SMTP_MAXRECIPIENTS": "7",
            "GOMAIL_SECURITY_REQUIREAUTH": "yes",
            "GOMAIL_RATELIMITS_GLOBALMAXPERDAY": "99",
            "GOMAIL_SMTP_TRUSTEDNETWORKS": "10.0.0.0/8, 192.168.1.0/24",
            "GOMAIL_SMTP_LOCALDOMAINS": '["example.com", "example.org"]',
        })
        self.assertEqual(config.batchSize, 3)
        self.assertEqual(config.smtp.maxRecipients, 7)
        self.assertTrue(config.security.requireAuth)
        self.assertEqual(config.rateLimits.globalMaxPerDay, 99)
        self.assertEqual(config.smtp.trustedNetworks, ("10.0.0.0/8", "192.168.1.0/24"))
        self.assertEqual(config.smtp.localDomains, ("example.com", "example.org"))

    def test_env_name(self) -> None:
        """The generic variable of a dotted key is its upper-cased path joined by underscores."""
        self.assertEqual(env_name("smtp.maxRecipients"), "GOMAIL_SMTP_MAXRECIPIENTS")
        self.assertEqual(env_name("batchSize"), "GOMAIL_BATCHSIZE")

    def test_generic_name_wins_over_go_name(self) -> None:
        """When both name the same key, GOMAIL_SMTPPORT beats SMTP_PORT."""
        config = self.load(None, {"SMTP_PORT": "2500", "GOMAIL_SMTPPORT": "2501"})
        self.assertEqual(config.smtpPort, 2501)

    def test_boolean_spellings(self) -> None:
        """Booleans accept true/false, 1/0, yes/no and on/off in any case."""
        for text, value in [("true", True), ("FALSE", False), ("1", True), ("0", False),
                            ("Yes", True), ("no", False), ("on", True), ("Off", False), (" true ", True)]:
            self.assertEqual(self.load(None, {"FORWARD_SSL": text}).forwardSSL, value, text)

    def test_unrelated_variables_are_ignored(self) -> None:
        """Variables without the GOMAIL_ prefix that gomail does not know change nothing."""
        config = self.load(None, {"HOME": "/root", "SMTP_HOSTNAME": "x", "gomail_batchsize": "1"})
        self.assertEqual(config.batchSize, 20)


class ConfigErrorTests(ConfigTestMixin, SynchronousTestCase):
    """Every mistake stops loading with one line naming the source and the key."""

    def assertFileError(self, document: Mapping[str, Any], key: str, phrase: str, *, json_too: bool = True) -> None:
        """The document, as TOML and as JSON, fails with '<file>: <key>: ...phrase...'."""
        writers = [self.write_toml, self.write_json] if json_too else [self.write_toml]
        for writer in writers:
            path = writer(document)
            text = self.load_error(path)
            self.assertTrue(text.startswith(f"{path}: {key}: "), text)
            self.assertIn(phrase, text)

    def assertEnvError(self, environ: Mapping[str, str], variable: str, key: str, phrase: str) -> None:
        text = self.load_error(None, environ)
        self.assertTrue(text.startswith(f"environment variable {variable}: {key}"), text)
        self.assertIn(phrase, text)

    def test_unknown_top_level_key(self) -> None:
        """A misspelt key is an error naming it, not silently ignored."""
        self.assertFileError({"smtpPrt": 25}, "smtpPrt", "unknown key")

    def test_unknown_key_in_section(self) -> None:
        """An unknown key inside a section is named with its section."""
        self.assertFileError({"security": {"requireAuht": True}}, "security.requireAuht", "unknown key")

    def test_unknown_key_in_provider(self) -> None:
        """An unknown key in the second provider is named with its index."""
        self.assertFileError({"forwardProviders": [{"host": "a"}, {"host": "b", "hots": "c"}]},
                             "forwardProviders[1].hots", "unknown key")

    def test_string_for_a_number(self) -> None:
        """smtpPort = "25" is refused: the Go relay's number must be a number."""
        self.assertFileError({"smtpPort": "25"}, "smtpPort", "must be a whole number, got a string")

    def test_number_for_a_boolean(self) -> None:
        """continueOnError = 1 is refused: booleans are true or false."""
        self.assertFileError({"continueOnError": 1}, "continueOnError", "must be true or false, got a number")
        self.assertFileError({"security": {"requireAuth": 0}}, "security.requireAuth", "must be true or false")

    def test_boolean_for_a_number(self) -> None:
        """smtpPort = true is refused even though Python's bool is an int."""
        self.assertFileError({"smtpPort": True}, "smtpPort", "must be a whole number, got a boolean")

    def test_fraction_for_a_number(self) -> None:
        """batchDelay = 2.5 is refused."""
        self.assertFileError({"batchDelay": 2.5}, "batchDelay", "must be a whole number")

    def test_list_and_table_types(self) -> None:
        """A string for a list, a scalar for a section and a list for a string are refused."""
        self.assertFileError({"smtp": {"trustedNetworks": "10.0.0.0/8"}}, "smtp.trustedNetworks", "must be a list")
        self.assertFileError({"security": True}, "security", "must be a table")
        self.assertFileError({"forwardHost": ["a", "b"]}, "forwardHost", "must be a string, got a list")
        self.assertFileError({"forwardProviders": ["smtp.example.com"]}, "forwardProviders[0]", "must be a table")

    def test_impossible_values(self) -> None:
        """Out-of-range numbers are refused with the allowed range and the value."""
        self.assertFileError({"smtpPort": 70000}, "smtpPort", "must be >= 0 and <= 65535, got 70000")
        self.assertFileError({"batchSize": 0}, "batchSize", "must be >= 1, got 0")
        self.assertFileError({"forwardPort": 0}, "forwardPort", "got 0")
        self.assertFileError({"workerCount": 1001}, "workerCount", "got 1001")
        self.assertFileError({"rateLimits": {"maxPerDay": 0}}, "rateLimits.maxPerDay", "got 0")
        self.assertFileError({"smtp": {"maxMessageSize": 10}}, "smtp.maxMessageSize", "got 10")
        self.assertFileError({"smtpHost": " "}, "smtpHost", "must not be empty")

    def test_bad_choice(self) -> None:
        """A string key with fixed choices lists them."""
        self.assertFileError({"smtp": {"bareLineEndings": "fix"}}, "smtp.bareLineEndings", "'reject', 'normalize'")

    def test_bad_cidr(self) -> None:
        """A trusted network that is not CIDR is named with the key and the value."""
        self.assertFileError({"smtp": {"trustedNetworks": ["127.0.0.0/8", "10.0.0.0/33"]}},
                             "smtp.trustedNetworks", "'10.0.0.0/33' is not an IP network")
        self.assertFileError({"smtp": {"trustedNetworks": ["localhost"]}}, "smtp.trustedNetworks", "'localhost'")

    def test_bad_domain(self) -> None:
        """A local domain with an @ is refused."""
        self.assertFileError({"smtp": {"localDomains": ["user@example.com"]}}, "smtp.localDomains", "not a domain")

    def test_bad_endpoint_string(self) -> None:
        """A listener that is not a Twisted endpoint description is refused with the value."""
        self.assertFileError({"smtp": {"listen": ["tcp:notaport"]}}, "smtp.listen",
                             "'tcp:notaport' is not a valid endpoint description")
        self.assertFileError({"smtp": {"implicitTlsListen": ["nosuchtype:465"]}}, "smtp.implicitTlsListen",
                             "not a valid endpoint description")
        self.assertFileError({"smtp": {"listen": ["tcp:25:bogus=1"]}}, "smtp.listen", "not a valid endpoint")

    def test_provider_without_host(self) -> None:
        """A [[forwardProviders]] table without host is an error naming forwardProviders[0].host."""
        path = self.write("gomail.toml", "[[forwardProviders]]\nport = 25\n")
        text = self.load_error(path)
        self.assertTrue(text.startswith(f"{path}: forwardProviders[0].host: "), text)
        self.assertFileError({"forwardProviders": [{"host": "a"}, {"port": 25}]}, "forwardProviders[1].host", "empty")

    def test_provider_bad_values(self) -> None:
        """Provider ports and priorities are range-checked like the top-level ones."""
        self.assertFileError({"forwardProviders": [{"host": "a", "port": 0}]}, "forwardProviders[0].port", "got 0")
        self.assertFileError({"forwardProviders": [{"host": "a", "priority": -1}]},
                             "forwardProviders[0].priority", "got -1")
        self.assertFileError({"forwardProviders": [{"host": "a", "ssl": "yes"}]}, "forwardProviders[0].ssl",
                             "must be true or false")

    def test_forward_without_host(self) -> None:
        """forwardSMTP = true with neither forwardHost nor providers names forwardHost."""
        self.assertFileError({"forwardSMTP": True}, "forwardHost", "must be set")

    def test_username_without_password(self) -> None:
        """defaultUsername without defaultPassword names defaultPassword."""
        self.assertFileError({"defaultUsername": "admin"}, "defaultPassword", "must be set")

    def test_certificate_without_key(self) -> None:
        """smtp.tlsCertificate alone names the missing smtp.tlsPrivateKey, and the other way round."""
        self.assertFileError({"smtp": {"tlsCertificate": "/etc/ssl/cert.pem"}}, "smtp.tlsPrivateKey", "together")
        self.assertFileError({"smtp": {"tlsPrivateKey": "/etc/ssl/key.pem"}}, "smtp.tlsCertificate", "together")

    def test_unreadable_certificate(self) -> None:
        """A certificate path that cannot be read is named with the key."""
        key = self.write("key.pem", "not really a key")
        self.assertFileError({"smtp": {"tlsCertificate": "/nonexistent/cert.pem", "tlsPrivateKey": key}},
                             "smtp.tlsCertificate", "cannot read '/nonexistent/cert.pem'")

    def test_invalid_toml_names_the_file(self) -> None:
        """A TOML syntax error names the file and says it is not valid TOML."""
        path = self.write("gomail.toml", 'smtpPort = 25\nsmtpHost = "unterminated\n')
        text = self.load_error(path)
        self.assertTrue(text.startswith(f"{path}: not valid TOML: "), text)
        self.assertIn("line 2", text)

    def test_invalid_json_names_the_file(self) -> None:
        """A JSON syntax error in config.json names the file."""
        path = self.write("config.json", '{"smtpPort": 25,}')
        self.assertTrue(self.load_error(path).startswith(f"{path}: not valid JSON: "))

    def test_non_utf8_toml(self) -> None:
        """A TOML file that is not UTF-8 is refused, naming the file."""
        path = self.write("gomail.toml", b'smtpHost = "\xff"\n')
        self.assertTrue(self.load_error(path).startswith(f"{path}: not valid TOML"))

    def test_json_top_level_must_be_an_object(self) -> None:
        """A config.json holding a list is refused."""
        path = self.write("config.json", "[1, 2]")
        self.assertIn("top level must be a table/object", self.load_error(path))

    def test_missing_file(self) -> None:
        """A file that does not exist is named, with the reason."""
        path = os.path.join(self.mktemp(), "nope.toml")
        text = self.load_error(path)
        self.assertTrue(text.startswith(f"{path}: cannot read the configuration file: "), text)
        self.assertIn("No such file", text)

    def test_unknown_gomail_variable(self) -> None:
        """A GOMAIL_ variable that matches no key is an error naming the variable."""
        text = self.load_error(None, {"GOMAIL_SMTP_MAXRECIPIENT": "5"})
        self.assertEqual(text, "environment variable GOMAIL_SMTP_MAXRECIPIENT: "
                               "no such configuration key (see conf/gomail.toml for the keys)")

    def test_bad_environment_boolean(self) -> None:
        """FORWARD_SSL=maybe names the variable and the key."""
        self.assertEnvError({"FORWARD_SSL": "maybe"}, "FORWARD_SSL", "forwardSSL", "must be true or false")
        self.assertEnvError({"GOMAIL_SECURITY_REQUIREAUTH": ""}, "GOMAIL_SECURITY_REQUIREAUTH",
                            "security.requireAuth", "must be true or false")

    def test_bad_environment_number(self) -> None:
        """SMTP_PORT=abc and SMTP_PORT=70000 name the variable and the key."""
        self.assertEnvError({"SMTP_PORT": "abc"}, "SMTP_PORT", "smtpPort", "must be a whole number")
        self.assertEnvError({"SMTP_PORT": "70000"}, "SMTP_PORT", "smtpPort", "got 70000")
        self.assertEnvError({"GOMAIL_BATCHSIZE": "0"}, "GOMAIL_BATCHSIZE", "batchSize", "got 0")

    def test_bad_environment_list(self) -> None:
        """A list variable with a broken JSON array or a bad item names the variable and the key."""
        self.assertEnvError({"GOMAIL_SMTP_TRUSTEDNETWORKS": "[10.0.0.0/8"}, "GOMAIL_SMTP_TRUSTEDNETWORKS",
                            "smtp.trustedNetworks", "not a valid JSON array")
        self.assertEnvError({"GOMAIL_SMTP_TRUSTEDNETWORKS": "10.0.0.0/8,nonsense"}, "GOMAIL_SMTP_TRUSTEDNETWORKS",
                            "smtp.trustedNetworks", "'nonsense' is not an IP network")

    def test_environment_error_wins_over_a_valid_file(self) -> None:
        """A bad override is reported even when the file's own value is fine."""
        path = self.write_toml({"smtpPort": 25})
        text = self.load_error(path, {"SMTP_PORT": "x"})
        self.assertTrue(text.startswith("environment variable SMTP_PORT: smtpPort: "), text)

    def test_messages_never_contain_secrets(self) -> None:
        """No error text contains a password, whatever else is wrong in the file or environment."""
        secrets = {"forwardPassword": "fw-secret-9d1c", "defaultPassword": "default-secret-77ab"}
        base = dict(secrets, defaultUsername="admin",
                    forwardProviders=[{"host": "p.example", "password": "provider-secret-3e3e"}])
        broken: list[dict[str, Any]] = [
            {"smtpPort": "25"}, {"smtpPort": 70000}, {"batchSize": 0}, {"bogus": 1},
            {"forwardSMTP": True},  # forwardHost missing, but providers given: valid; made invalid below
            {"forwardPassword": 12345}, {"defaultPassword": ["x"]},
            {"smtp": {"trustedNetworks": ["bad"]}}, {"smtp": {"listen": ["tcp:x"]}},
            {"forwardProviders": [{"host": "p.example", "password": "provider-secret-3e3e", "port": 0}]},
            {"forwardProviders": [{"password": "provider-secret-3e3e"}]},
        ]
        leaked = list(secrets.values()) + ["provider-secret-3e3e", "12345"]
        for change in broken:
            document = dict(base, **change)
            if change == {"forwardSMTP": True}:
                document.pop("forwardProviders")
            for path in (self.write_toml(document), self.write_json(document)):
                text = self.load_error(path)
                for secret in leaked:
                    self.assertNotIn(secret, text)
        for environ in ({"FORWARD_PASSWORD": "env-secret-1", "SMTP_PORT": "x"},
                        {"DEFAULT_PASSWORD": "env-secret-1", "GOMAIL_NOPE": "env-secret-2"},
                        {"GOMAIL_FORWARD_PASSWORD": "env-secret-1"}):
            text = self.load_error(None, environ)
            self.assertNotIn("env-secret", text)

    def test_syntax_errors_do_not_echo_a_password(self) -> None:
        """An unquoted password (a TOML or JSON syntax error) is not quoted back in the message."""
        for path in (self.write("gomail.toml", "forwardPassword = hunter2secret\n"),
                     self.write("config.json", '{"forwardPassword": hunter2secret}')):
            self.assertNotIn("hunter2secret", self.load_error(path))

    def test_control_characters_stay_on_one_line(self) -> None:
        """A key or value with a newline in it still gives a one-line message that names it."""
        path = self.write("config.json", json.dumps({"smtp\nPort": 25}))
        self.assertIn("smtp\\nPort: unknown key", self.load_error(path))
        path = self.write_json({"smtp": {"listen": ["foo\nbar:1"]}})
        self.assertIn("smtp.listen", self.load_error(path))

    def test_error_attributes(self) -> None:
        """ConfigError keeps source, key and problem apart for callers that want them."""
        path = self.write_json({"batchSize": 0})
        error = self.assertRaises(ConfigError, load_config, path, {})
        self.assertEqual((error.source, error.key), (path, "batchSize"))
        self.assertEqual(error.problem, "must be >= 1, got 0")


class DescribeTests(ConfigTestMixin, SynchronousTestCase):
    """The summary printed for a valid configuration."""

    def test_summary_lines(self) -> None:
        """describe() shows listeners, spool, delivery mode and the security switches."""
        config = self.load(self.write_toml({"smtpPort": 2525, "smtp": {"hostname": "mx.example"},
                                            "spool": {"directory": "/srv/spool"}}))
        self.assertEqual(describe(config).splitlines(), [
            "smtp listen: tcp:2525:interface=127.0.0.1",
            "smtp implicit TLS: off",
            "hostname: mx.example",
            "spool: /srv/spool",
            "delivery: local mailbox",
            "monitor: tcp:8025:interface=127.0.0.1",
            "nginx auth_http: tcp:8090:interface=127.0.0.1/api/auth",
            "admin: tcp:8089:interface=127.0.0.1",
            "requireAuth: true, allowLocalOnly: true",
        ])

    def test_summary_leaves_secrets_out(self) -> None:
        """describe() of a forwarding configuration names the smarthost but no password."""
        text = describe(self.load(self.write_json(GO_DOCUMENT)))
        self.assertIn("delivery: smarthost smtp.example.com", text)
        for secret in ("default-pw-4711", "forward-pw-0815", "provider-pw-42"):
            self.assertNotIn(secret, text)


class DeliverySectionTests(SynchronousTestCase):
    """The delivery section: numbers with fractions, and their bounds."""

    def test_defaults(self) -> None:
        """Retry after 5 minutes, doubling, capped at an hour, give up after 5 days, failed/ retried hourly."""
        delivery = load_config(None, environ={}).delivery
        self.assertEqual((delivery.retryInitialDelay, delivery.retryBackoffFactor, delivery.retryMaxDelay,
                          delivery.retryJitter, delivery.maxQueueAge, delivery.failedRetryInterval),
                         (300, 2.0, 3600, 0.2, 432000, 3600))

    def test_float_keys_take_whole_numbers_and_fractions(self) -> None:
        """retryBackoffFactor = 3 and GOMAIL_DELIVERY_RETRYJITTER=0.5 load as floats."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[delivery]\nretryBackoffFactor = 3\n")
        delivery = load_config(path, environ={"GOMAIL_DELIVERY_RETRYJITTER": "0.5"}).delivery
        self.assertEqual((delivery.retryBackoffFactor, delivery.retryJitter), (3.0, 0.5))

    def test_bad_float(self) -> None:
        """A jitter above 1 or a factor given as text is refused, naming the key."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[delivery]\nretryJitter = 1.5\n")
        with self.assertRaises(ConfigError) as caught:
            load_config(path, environ={})
        self.assertIn("delivery.retryJitter: must be >= 0.0 and <= 1.0, got 1.5", str(caught.exception))
        with open(path, "w") as f:
            f.write('[delivery]\nretryBackoffFactor = "2"\n')
        with self.assertRaises(ConfigError) as caught:
            load_config(path, environ={})
        self.assertIn("delivery.retryBackoffFactor: must be a number, got a string", str(caught.exception))
