# -*- test-case-name: tests.test_cli -*-
"""TLS server contexts: load the configured certificate, or make a self-signed one."""

from __future__ import annotations

import datetime
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import crypto
from twisted.internet import ssl
from twisted.logger import Logger

log = Logger()
#: The private keys pyOpenSSL can serve (load_pem_private_key may return others, such as X25519).
_TLS_KEY_TYPES = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, dsa.DSAPrivateKey,
                  ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)


class TLSConfigError(Exception):
    """A certificate or key that cannot be used; the text names the file."""


def server_context(certificate: str, private_key: str, data_dir: str, hostname: str) -> ssl.CertificateOptions:
    """
    A server TLS context from the configured PEM files, or, when none are
    configured, from a self-signed certificate kept in C{data_dir/tls/}
    (generated on first start, with a warning).
    """
    if not certificate:
        certificate, private_key = ensure_self_signed(os.path.join(data_dir, "tls"), hostname)
    try:
        with open(certificate, "rb") as f:
            chain = x509.load_pem_x509_certificates(f.read())
    except (OSError, ValueError) as e:
        raise TLSConfigError(f"smtp.tlsCertificate: cannot load {certificate}: {e}") from None
    try:
        with open(private_key, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise TLSConfigError(f"smtp.tlsPrivateKey: cannot load {private_key}: {e}") from None
    if not isinstance(key, _TLS_KEY_TYPES):
        raise TLSConfigError(f"smtp.tlsPrivateKey: {private_key} holds a {type(key).__name__}, "
                             "not an RSA, EC, DSA, Ed25519 or Ed448 key")
    return ssl.CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(key),
        certificate=crypto.X509.from_cryptography(chain[0]),
        extraCertChain=[crypto.X509.from_cryptography(c) for c in chain[1:]],
    )


def ensure_self_signed(directory: str, hostname: str) -> tuple[str, str]:
    """Return (cert, key) paths of a self-signed certificate, creating it if missing."""
    cert_path = os.path.join(directory, "selfsigned-cert.pem")
    key_path = os.path.join(directory, "selfsigned-key.pem")
    if os.path.exists(cert_path) and os.path.exists(key_path):
        return cert_path, key_path
    log.warn("no TLS certificate configured (smtp.tlsCertificate): generated a self-signed one in "
             "{directory}; clients will not be able to verify this server", directory=directory)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64] or "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    names = {hostname, "localhost"} - {""}
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in sorted(names)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path
