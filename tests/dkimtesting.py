"""DKIM keys for tests: an RSA 2048 and an Ed25519 key, with the DNS TXT record of each."""

from __future__ import annotations

import base64
import os

import nacl.signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PRIVATE = _rsa.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption())
RSA_RECORD = b"v=DKIM1; k=rsa; p=" + base64.b64encode(_rsa.public_key().public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
_ed = nacl.signing.SigningKey.generate()
ED25519_PRIVATE = base64.b64encode(bytes(_ed)) + b"\n"
ED25519_RECORD = b"v=DKIM1; k=ed25519; p=" + base64.b64encode(bytes(_ed.verify_key))


def write_key(directory: str, domain: str, selector: str, data: bytes) -> str:
    """Write a key where the Go relay keeps it, keys/<domain>/<selector>.private under C{directory}."""
    path = os.path.join(directory, "keys", domain, f"{selector}.private")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)
    return path


def dns_for(records: dict[str, bytes]):  # type: ignore[no-untyped-def]
    """A dkimpy C{dnsfunc} answering C{<selector>._domainkey.<domain>} from C{records}."""
    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return records.get(name.decode().rstrip("."))
    return dnsfunc
