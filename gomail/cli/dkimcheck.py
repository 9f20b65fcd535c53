# -*- test-case-name: tests.test_cli_dkim -*-
"""C{gomail dkim check DOMAIN}: the published DKIM record against the configured key."""

from __future__ import annotations

import argparse
import base64
import sys
from typing import Any

from gomail.cli.common import load
from gomail.configdelivery import dkim_keys
from gomail.configload import ConfigError


def public_key(private_key: bytes) -> tuple[str, bytes]:
    """(k=, the public key's bytes as p= carries them) for a private key file's contents."""
    if b"-----BEGIN" in private_key:
        from cryptography.hazmat.primitives import serialization

        key: Any = serialization.load_pem_private_key(private_key, password=None)
        return "rsa", key.public_key().public_bytes(serialization.Encoding.DER,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo)
    import nacl.encoding
    import nacl.signing

    signing = nacl.signing.SigningKey(private_key.strip(), encoder=nacl.encoding.Base64Encoder)
    return "ed25519", bytes(signing.verify_key)


def record_tags(text: str) -> dict[str, str]:
    """The tags of a DKIM key record (RFC 6376 3.6.1), whitespace removed from values."""
    tags = {}
    for part in text.split(";"):
        name, _, value = part.partition("=")
        if name.strip():
            tags[name.strip()] = "".join(value.split())
    return tags


def check(args: argparse.Namespace) -> int:
    """Exit 0 when the record matches the key, 1 with one line saying what differs."""
    try:
        config = load(args)
        keys = dkim_keys(config.dkim, config.defaultUsername)
    except ConfigError as e:
        print(f"gomail: configuration error: {e}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"gomail: dkim check: {e.args[0]}: {e.args[1]}", file=sys.stderr)
        return 1
    domain = args.domain.lower().rstrip(".")
    found = [(selector, path) for _, d, selector, path in keys if d == domain]
    if not found:
        print(f"gomail: dkim check: no key for {domain} in the configuration", file=sys.stderr)
        return 1
    selector, path = found[0]
    try:
        with open(path, "rb") as f:
            kind, public = public_key(f.read())
    except (OSError, ValueError) as e:
        print(f"gomail: dkim check: cannot read the key {path}: {e}", file=sys.stderr)
        return 1
    name = f"{selector}._domainkey.{domain}"
    try:
        texts = _lookup(name, config.directDelivery.dnsServers, config.directDelivery.dnsTimeout)
    except Exception as e:  # noqa: BLE001 -- any DNS failure: said in one line
        print(f"gomail: dkim check: no TXT record at {name} ({type(e).__name__})", file=sys.stderr)
        return 1
    for text in texts:
        tags = record_tags(text)
        if tags.get("p") == base64.b64encode(public).decode() and tags.get("k", "rsa") == kind:
            print(f"{name}: the published {kind} key matches {path}")
            return 0
    print(f"gomail: dkim check: {name} does not publish the key of {path}; publish: "
          f"v=DKIM1; k={kind}; p={base64.b64encode(public).decode()}", file=sys.stderr)
    return 1


def _lookup(name: str, servers: tuple[str, ...], timeout: int) -> list[str]:
    """The TXT strings at C{name} (each record's strings joined), asked with twisted.names."""
    from twisted.internet import defer, task

    from gomail.delivery.mx import dns_resolver

    found: list[str] = []

    async def ask(reactor: Any) -> None:
        answers, _, _ = await dns_resolver(reactor, servers).lookupText(name, timeout=(timeout,))
        found.extend(b"".join(r.payload.data).decode("ascii", "replace") for r in answers
                     if getattr(r.payload, "data", None) is not None)

    errors: list[BaseException] = []

    def main(reactor: Any) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(ask(reactor)).addErrback(lambda f: errors.append(f.value))

    try:
        task.react(main)
    except SystemExit:
        pass
    if errors:
        raise errors[0]
    return found
