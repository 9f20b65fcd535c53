# -*- test-case-name: tests.test_cli_dkim -*-
"""
C{gomail dkim keygen DOMAIN [--selector S] [--type rsa|ed25519] [--directory D]}:
a new signing key where the Go relay keeps its keys,
C{<directory>/keys/<domain>/<selector>.private} (mode 0600), and the DNS TXT
record to publish at C{<selector>._domainkey.<domain>}.

C{gomail dkim check DOMAIN [--config FILE]}: looks up the published record of
the configured key of DOMAIN (through C{directDelivery.dnsServers}, or the
system's resolvers) and says whether it matches (exit 0) or not (exit 1).
"""

from __future__ import annotations

import argparse
import base64
import os
import sys

COMMANDS = ("dkim",)


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add C{dkim keygen}."""
    group = commands.add_parser("dkim", help="DKIM signing keys")
    actions = group.add_subparsers(dest="action", metavar="ACTION")
    keygen = actions.add_parser("keygen", help="write a new private key and print its DNS record")
    keygen.add_argument("domain", help="the signing domain (d=), such as example.com")
    keygen.add_argument("--selector", default="mail", help="the selector (s=; default: mail)")
    keygen.add_argument("--type", choices=("rsa", "ed25519"), default="rsa",
                        help="rsa (2048 bits, what every receiver checks; the default) or ed25519")
    keygen.add_argument("--directory", default=".", help="where keys/<domain>/<selector>.private goes (default: .)")
    from gomail.cli.common import common_options

    check = actions.add_parser("check", parents=[common_options("dkim keys and DNS servers")],
                               help="does the published DNS record match the configured key?")
    check.add_argument("domain", help="a signing domain of the configuration")


def run(args: argparse.Namespace) -> int:
    """Write the key (never over an existing one) and print the TXT record; 1 with one line on an error."""
    if getattr(args, "action", None) == "check":
        from gomail.cli.dkimcheck import check

        return check(args)
    if getattr(args, "action", None) != "keygen":
        print("gomail: dkim: say `gomail dkim keygen DOMAIN` or `gomail dkim check DOMAIN`", file=sys.stderr)
        return 2
    domain = args.domain.lower().rstrip(".")
    if not domain or "/" in domain or domain.startswith(".") or "/" in args.selector or not args.selector:
        print("gomail: dkim keygen: the domain and the selector must be plain names", file=sys.stderr)
        return 1
    private, public, kind = _rsa() if args.type == "rsa" else _ed25519()
    path = os.path.join(args.directory, "keys", domain, f"{args.selector}.private")
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        print(f"gomail: dkim keygen: {path} exists: not replaced (remove it, or choose another --selector)",
              file=sys.stderr)
        return 1
    except OSError as e:
        print(f"gomail: dkim keygen: cannot write {path}: {e.strerror}", file=sys.stderr)
        return 1
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    print(f"private key: {os.path.abspath(path)} (mode 0600)")
    print(f"publish this TXT record at {args.selector}._domainkey.{domain}:")
    print(f"v=DKIM1; k={kind}; p={public}")
    print(f"then set [dkim] enabled = true, domain = \"{domain}\", selector = \"{args.selector}\", "
          f"privateKeyPath = \"{path}\" (or add it to [[dkim.keys]])")
    return 0


def _rsa() -> tuple[bytes, str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, base64.b64encode(public).decode(), "rsa"


def _ed25519() -> tuple[bytes, str, str]:
    import nacl.signing

    key = nacl.signing.SigningKey.generate()
    return base64.b64encode(bytes(key)) + b"\n", base64.b64encode(bytes(key.verify_key)).decode(), "ed25519"
