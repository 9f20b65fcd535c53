# -*- test-case-name: tests.test_config -*-
"""
Load and validate gomail's configuration.

Sources, weakest first: the defaults in :mod:`gomail.configschema`, one file (TOML,
or the Go relay's ``config.json`` as-is when the name ends in ``.json``), then
environment variables: the Go relay's names (``SMTP_HOST``, ``FORWARD_PORT``...)
and ``GOMAIL_<SECTION>_<KEY>`` for every key (``GOMAIL_SMTP_MAXRECIPIENTS``,
``GOMAIL_BATCHSIZE``). Every problem raises :class:`ConfigError`, whose text is
one line naming the source and the key.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import tomllib
import typing
from collections.abc import Mapping
from typing import Any

from gomail.configmailaccess import with_mail_access_plugins
from gomail.configschema import Config

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
ENV_PREFIX = "GOMAIL_"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ConfigError(Exception):
    """A configuration problem: ``str(error)`` is one line naming source and key."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        super().__init__(source, key, problem)
        self.source, self.key, self.problem = source, key, problem

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        text = f"{where}{self.key}: {self.problem}" if self.key else f"{where}{self.problem}"
        # Keys and values come from the file: a newline in one must not break the one-line promise.
        return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def load_config(path: str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """
    Read the file at C{path} (or only defaults when None), apply the environment,
    validate, and resolve derived values (absolute paths, default listeners).

    @raise ConfigError: for an unreadable file, an unknown key, a wrong type or a bad value.
    """
    environ = os.environ if environ is None else environ
    document = _read_document(path) if path else {}
    source = path or "defaults"
    overrides = _environment_overrides(environ)
    config = _build(Config, document, "", source, overrides)
    _check_unused(overrides)
    return _resolve(config, source)


def _read_document(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(path, "", f"cannot read the configuration file: {e.strerror}") from None
    try:
        if path.endswith(".json"):
            document = json.loads(raw)
        else:
            document = tomllib.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(path, "", f"not valid {'JSON' if path.endswith('.json') else 'TOML'}: {e}") from None
    if not isinstance(document, dict):
        raise ConfigError(path, "", "the top level must be a table/object of keys")
    return document


def env_name(dotted: str) -> str:
    """The generic environment variable for a dotted key: C{smtp.maxRecipients} -> C{GOMAIL_SMTP_MAXRECIPIENTS}."""
    return ENV_PREFIX + dotted.replace(".", "_").upper()


def _all_keys(cls: type, prefix: str = "") -> typing.Iterator[tuple[str, dataclasses.Field]]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        dotted = prefix + f.name
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _all_keys(hints[f.name], dotted + ".")
        else:
            yield dotted, f


class _Override:
    """An environment value waiting for its key, remembering which variable set it."""

    def __init__(self, variable: str, value: str) -> None:
        self.variable, self.value, self.used = variable, value, False


def _environment_overrides(environ: Mapping[str, str]) -> dict[str, _Override]:
    by_generic = {env_name(dotted): dotted for dotted, _ in _all_keys(Config)}
    overrides: dict[str, _Override] = {}
    for dotted, f in _all_keys(Config):
        if f.metadata.get("tables"):
            continue
        legacy = f.metadata.get("env")
        if legacy and legacy in environ:
            overrides[dotted] = _Override(legacy, environ[legacy])
    for variable, value in environ.items():
        if not variable.startswith(ENV_PREFIX):
            continue
        known = by_generic.get(variable.upper())
        if known is None:
            overrides["?" + variable] = _Override(variable, value)
        else:
            # The generic name is the more specific request: it wins over a legacy one.
            overrides[known] = _Override(variable, value)
    return overrides


def _check_unused(overrides: dict[str, _Override]) -> None:
    for key, override in overrides.items():
        if key.startswith("?"):
            raise ConfigError(f"environment variable {override.variable}", "",
                              "no such configuration key (see conf/gomail.toml for the keys)")


def _build(cls: Any, data: Any, prefix: str, source: str, overrides: dict[str, _Override]) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(source, prefix.rstrip(".") or "(top level)", "must be a table/object of keys")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    tables = next((f.name for f in known.values() if f.metadata.get("tables")), None)
    collected: list[tuple[str, Any]] = []
    for key, value in data.items():
        if key in known and not known[key].metadata.get("tables"):
            continue
        if tables is None:
            raise ConfigError(source, prefix + key, "unknown key")
        if not isinstance(value, dict):
            raise ConfigError(source, prefix + key, f"unknown key (a plugin's settings are a table: "
                                                    f"[{prefix}{key}])")
        collected.append((key, value))
    values: dict[str, Any] = {}
    for name, f in known.items():
        dotted = prefix + name
        kind = hints[name]
        if f.metadata.get("tables"):
            values[name] = tuple(collected)
            continue
        if dataclasses.is_dataclass(kind):
            values[name] = _build(kind, data.get(name, {}), dotted + ".", source, overrides)
            continue
        override = overrides.get(dotted)
        if override is not None:
            where = f"environment variable {override.variable}"
            value = _coerce(_from_text(override.value, kind, where, dotted), kind, where, dotted, overrides)
        elif name in data:
            where = source
            value = _coerce(data[name], kind, where, dotted, overrides)
        else:
            # An absent key takes its default, which must pass the check too (a provider needs a host).
            where = source
            value = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        check = f.metadata.get("check")
        problem = check(value) if check else None
        if problem:
            raise ConfigError(where, dotted, problem)
        values[name] = value
    return cls(**values)


def _from_text(text: str, kind: Any, where: str, dotted: str) -> Any:
    """Turn an environment variable's text into the JSON-like value the key expects."""
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigError(where, dotted, "must be true or false (also 1/0, yes/no, on/off)")
    if kind is int:
        try:
            return int(text.strip())
        except ValueError:
            raise ConfigError(where, dotted, "must be a whole number") from None
    if kind is float:
        try:
            return float(text.strip())
        except ValueError:
            raise ConfigError(where, dotted, "must be a number") from None
    if typing.get_origin(kind) is tuple:
        stripped = text.strip()
        if stripped.startswith("["):
            try:
                return json.loads(stripped)
            except ValueError as e:
                raise ConfigError(where, dotted, f"not a valid JSON array: {e}") from None
        return [item.strip() for item in stripped.split(",") if item.strip()]
    return text


def _coerce(value: Any, kind: Any, where: str, dotted: str, overrides: dict[str, _Override]) -> Any:
    """Check a value against the key's type; lists become tuples, tables nested settings."""
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(where, dotted, f"must be true or false, got {_type_name(value)}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(where, dotted, f"must be a whole number, got {_type_name(value)}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(where, dotted, f"must be a number, got {_type_name(value)}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(where, dotted, f"must be a string, got {_type_name(value)}")
        return value
    if typing.get_origin(kind) is tuple:
        item_kind = typing.get_args(kind)[0]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(where, dotted, f"must be a list, got {_type_name(value)}")
        items = []
        for index, item in enumerate(value):
            item_key = f"{dotted}[{index}]"
            if dataclasses.is_dataclass(item_kind):
                items.append(_build(item_kind, item, item_key + ".", where, {}))
            else:
                items.append(_coerce(item, item_kind, where, item_key, overrides))
        return tuple(items)
    raise TypeError(f"unsupported setting type {kind!r} for {dotted}")  # a bug in settings.py


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def _resolve(config: Config, source: str) -> Config:
    """Cross-key checks and derived values."""
    if config.forwardSMTP and not (config.forwardHost or config.forwardProviders):
        raise ConfigError(source, "forwardHost", "must be set (or forwardProviders given) when forwardSMTP is true")
    if config.forwardSMTP and config.directDelivery.enabled:
        raise ConfigError(source, "directDelivery.enabled", "cannot be true with forwardSMTP = true: outside mail "
                                                            "goes either to the smarthost or to each domain's MX")
    if config.dkim.enabled:
        _check_dkim_keys(config, source)
    _check_routes(config, source)
    if config.defaultUsername and not config.defaultPassword:
        raise ConfigError(source, "defaultPassword", "must be set when defaultUsername is set")
    smtp = config.smtp
    if bool(smtp.tlsCertificate) != bool(smtp.tlsPrivateKey):
        raise ConfigError(source, "smtp.tlsPrivateKey" if smtp.tlsCertificate else "smtp.tlsCertificate",
                          "tlsCertificate and tlsPrivateKey must be set together")
    for key, path in (("smtp.tlsCertificate", smtp.tlsCertificate), ("smtp.tlsPrivateKey", smtp.tlsPrivateKey)):
        if path and not os.access(path, os.R_OK):
            raise ConfigError(source, key, f"cannot read {path!r}")
    data_dir = os.path.abspath(config.dataDir)
    spool_dir = os.path.abspath(config.spool.directory or os.path.join(data_dir, "spool"))
    listen = smtp.listen or (tcp_endpoint(config.smtpHost, config.smtpPort),)
    auth = dataclasses.replace(
        config.auth,
        database=os.path.abspath(config.auth.database or os.path.join(data_dir, "gomail.db")),
        secretFile=os.path.abspath(config.auth.secretFile or os.path.join(data_dir, "auth.secret")))
    monitor = config.monitor
    if not monitor.listen:
        monitor = dataclasses.replace(monitor, listen=(tcp_endpoint("127.0.0.1", config.healthCheckPort),))
    return dataclasses.replace(
        config,
        dataDir=data_dir,
        auth=auth,
        monitor=monitor,
        spool=dataclasses.replace(config.spool, directory=spool_dir),
        smtp=dataclasses.replace(smtp, listen=listen, hostname=smtp.hostname or socket.getfqdn()),
        # The built-in POP3 and IMAP plugins are on while [pop3] and [imap] are (gomail.configmailaccess).
        plugins=dataclasses.replace(config.plugins,
                                    enabled=with_mail_access_plugins(config.plugins.enabled, config)),
    )


def _check_routes(config: Config, source: str) -> None:
    """Each route names a domain that is not local, once, and a host; each TLS policy a domain, once."""
    from gomail.smtp.address import canonical_domain

    policies: set[str] = set()
    for index, policy in enumerate(config.directDelivery.tlsPolicies):
        key = f"directDelivery.tlsPolicies[{index}].domain"
        try:
            domain = canonical_domain(policy.domain)
        except ValueError:
            raise ConfigError(source, key, f"{policy.domain!r} is not a domain") from None
        if domain in policies:
            raise ConfigError(source, key, f"{domain} has a TLS policy already")
        policies.add(domain)

    local = {canonical_domain(d) for d in config.smtp.localDomains}
    seen: set[str] = set()
    for index, route in enumerate(config.routes):
        try:
            domain = canonical_domain(route.domain)
        except ValueError:
            raise ConfigError(source, f"routes[{index}].domain", f"{route.domain!r} is not a domain") from None
        if domain in local:
            raise ConfigError(source, f"routes[{index}].domain", f"{domain} is a local domain (smtp.localDomains)")
        if domain in seen:
            raise ConfigError(source, f"routes[{index}].domain", f"{domain} has a route already")
        seen.add(domain)
        if not route.host:
            raise ConfigError(source, f"routes[{index}].host", "must be set")


def _check_dkim_keys(config: Config, source: str) -> None:
    """Every signing key must be a readable, usable private key (checked at start, not at the first send)."""
    from gomail.configdelivery import dkim_keys
    from gomail.delivery.dkimsign import read_key

    try:
        keys = dkim_keys(config.dkim, config.defaultUsername)
    except ValueError as e:
        raise ConfigError(source, e.args[0], e.args[1]) from None
    for key, domain, selector, path in keys:
        try:
            read_key(domain, selector, path)
        except OSError as e:
            raise ConfigError(source, key, f"cannot read the private key {path!r}: {e.strerror}") from None
        except ValueError as e:
            raise ConfigError(source, key, f"{path!r}: {e}") from None


def tcp_endpoint(host: str, port: int) -> str:
    """A Twisted TCP server endpoint string for host and port (IPv6 colons escaped)."""
    return f"tcp:{port}:interface={host.replace(':', chr(92) + ':')}"


def describe(config: Config) -> str:
    """A short human summary of a loaded configuration, secrets left out."""
    lines = [
        f"smtp listen: {', '.join(config.smtp.listen)}",
        f"smtp implicit TLS: {', '.join(config.smtp.implicitTlsListen) or 'off'}",
        f"hostname: {config.smtp.hostname}",
        f"spool: {config.spool.directory}",
        f"delivery: {_delivery_summary(config)}",
        f"monitor: {', '.join(config.monitor.listen) if config.enableHealthCheck else 'off'}",
        f"nginx auth_http: {', '.join(config.nginxAuth.listen) + config.nginxAuth.path if config.nginxAuth.enabled else 'off'}",
        f"admin: {', '.join(config.admin.listen) if config.admin.enabled else 'off'}",
        (f"requireAuth: {str(config.security.requireAuth).lower()}, "
         f"allowLocalOnly: {str(config.security.allowLocalOnly).lower()}"),
    ]
    return "\n".join(lines)


def _delivery_summary(config: Config) -> str:
    if config.forwardSMTP:
        return "smarthost " + (config.forwardHost or "providers")
    if config.directDelivery.enabled:
        return "each domain's MX (directDelivery)"
    return "local mailbox"


def warnings(config: Config) -> list[str]:
    """
    What a valid configuration probably does not mean to do, one sentence
    each (printed by C{gomail check-config}, logged at start).
    """
    found = []
    if not config.forwardSMTP and not config.directDelivery.enabled and not config.smtp.localDomains:
        found.append("forwardSMTP is false and smtp.localDomains is empty: mail for every domain is "
                     "delivered to local Maildirs; set forwardSMTP with forwardHost (or forwardProviders) "
                     "to relay outside mail, and list your own domains in smtp.localDomains")
    return found

