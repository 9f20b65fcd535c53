# -*- test-case-name: tests.test_dkim -*-
"""
DKIM signatures (RFC 6376) of outgoing mail, made with C{dkimpy}.

The header section is signed by dkimpy (its header canonicalisation,
hashing and RSA or Ed25519 signing); the body hash is computed here while
the file is read in blocks (relaxed canonicalisation, L{RelaxedBodyHash}),
so a message of any size is signed without being held in memory, and the
signature can carry C{x=} (C{dkim.signatureExpiry}), which dkimpy's own
C{sign()} does not offer. Relaxed/relaxed, as the issue asks and as
receivers handle best. Signing runs in a thread (the CPU pool), never on
the reactor.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, BinaryIO

import dkim
from dkim.canonicalization import CanonicalizationPolicy
from dkim.crypto import HASH_ALGORITHMS, parse_pem_private_key

#: RFC 6376 5.4.1's recommended fields (dkimpy's list); From is signed twice (oversigned).
DEFAULT_HEADERS = tuple(name.decode() for name in dkim.DKIM.SHOULD)
#: Bytes read from a message at a time.
BLOCK = 1024 * 1024
#: The largest header section signed (a message with more is not signed).
MAX_HEADER_BYTES = 1024 * 1024
_WSP = re.compile(rb"[ \t]+")


class RelaxedBodyHash:
    """The C{bh=} of a body fed in blocks, with RFC 6376 3.4.4's relaxed canonicalisation."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._partial = b""
        self._blank = 0  # empty lines held back: they count only if something follows them
        self._any = False

    def update(self, data: bytes) -> None:
        data = self._partial + data
        end = data.rfind(b"\n")
        if end < 0:
            self._partial = data
            return
        self._partial = data[end + 1:]
        for line in data[:end + 1].split(b"\n")[:-1]:
            self._line(line[:-1] if line.endswith(b"\r") else line)

    def _line(self, line: bytes) -> None:
        line = _WSP.sub(b" ", line).rstrip(b" ")
        if not line:
            self._blank += 1
            return
        self._hash.update(b"\r\n" * self._blank + line + b"\r\n")
        self._blank = 0
        self._any = True

    def digest(self) -> bytes:
        """The base64 body hash (the body ends here)."""
        if self._partial:
            self._line(self._partial)
            self._partial = b""
        return base64.b64encode(self._hash.digest())


@dataclass(frozen=True)
class SigningKey:
    """One domain's key: C{d=}, C{s=}, the private key (PEM for RSA, base64 for Ed25519) and its algorithm."""

    domain: str
    selector: str
    private_key: bytes
    algorithm: str  # "rsa-sha256" or "ed25519-sha256"


def key_algorithm(private_key: bytes) -> str:
    """Which algorithm a key file holds: PEM is RSA, a bare base64 seed (dknewkey's) is Ed25519."""
    return "rsa-sha256" if b"-----BEGIN" in private_key else "ed25519-sha256"


def read_key(domain: str, selector: str, path: str) -> SigningKey:
    """
    The key in the file at C{path} (RSA in PEM, or an Ed25519 seed in base64
    as dkimpy's C{dknewkey} writes it), checked to be usable.

    @raise OSError: it cannot be read.
    @raise ValueError: it is no usable private key.
    """
    with open(path, "rb") as f:
        data = f.read()
    key = SigningKey(domain, selector, data, key_algorithm(data))
    check_key(key)
    return key


def check_key(key: SigningKey) -> None:
    """Raise ValueError when the key cannot sign (read at start, so a bad file is a configuration error)."""
    try:
        _private(key)
    except Exception as e:  # noqa: BLE001 -- dkimpy and nacl raise their own kinds
        raise ValueError(f"not a usable {key.algorithm} private key: {e}") from None


@functools.lru_cache(maxsize=64)
def _private(key: SigningKey) -> Any:
    """
    The key as the signing library takes it: cryptography's RSA key
    (OpenSSL), or a PyNaCl signing key. Parsed once per key (loading and
    checking an RSA key costs tens of milliseconds).
    """
    if key.algorithm == "rsa-sha256":
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        parse_pem_private_key(key.private_key)  # dkimpy's own check of the key (raises for what it refuses)
        return load_pem_private_key(key.private_key, password=None)
    import nacl.encoding
    import nacl.signing

    return nacl.signing.SigningKey(key.private_key.strip(), encoder=nacl.encoding.Base64Encoder)


def _sign_digest(key: SigningKey, private: Any, digest: bytes) -> bytes:
    """
    The signature of a SHA-256 C{digest}. RSA goes through OpenSSL (via
    cryptography): dkimpy's own RSA is pure Python, about 10 ms a message
    for 2048 bits, holding the interpreter lock all along (bench/README.md).
    """
    if key.algorithm == "rsa-sha256":
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding, utils

        return bytes(private.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256())))
    return bytes(private.sign(digest).signature)


class _Signer(dkim.DKIM):  # type: ignore[misc]  # dkimpy is untyped
    """dkimpy's header parsing and canonicalisation, signing with a body hash made elsewhere and the tags given."""

    def sign_prehashed(self, key: SigningKey, headers: list[bytes], body_hash: bytes, now: int,
                       expiry: int) -> bytes:
        self.signature_algorithm = key.algorithm.encode()
        self.hasher = HASH_ALGORITHMS[self.signature_algorithm]
        policy = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
        include = tuple(h.lower() for h in headers)
        fields = [(b"v", b"1"), (b"a", self.signature_algorithm), (b"c", b"relaxed/relaxed"),
                  (b"d", key.domain.encode()), (b"s", key.selector.encode()), (b"t", str(now).encode()),
                  *([(b"x", str(now + expiry).encode())] if expiry else []),
                  (b"h", b" : ".join(include)), (b"bh", body_hash), (b"b", b"0" * 60)]
        # As dkimpy's gen_header: fold, hash the signed fields and this one with b= empty, sign, fill b=.
        name = b"DKIM-Signature"
        value = dkim.RE_BTAG.sub(b"\\1", dkim.fold(b"; ".join(b"=".join(f) for f in fields), namelen=len(name),
                                                    linesep=b"\r\n"))
        hasher = dkim.HashThrough(hashlib.sha256())
        dkim.hash_headers(hasher, policy, policy.canonicalize_headers(self.headers), include, (name, b" " + value),
                          dict(fields))
        signature = _sign_digest(key, _private(key), hasher.digest())
        fields[-1] = (b"b", base64.b64encode(signature))
        value = dkim.fold(b"; ".join(b"=".join(f) for f in fields) + b"\r\n", namelen=len(name), linesep=b"\r\n")
        return name + b": " + value


def sign_file(source: BinaryIO, key: SigningKey, headers: Iterable[str], now: int, expiry: int = 0) -> bytes | None:
    """
    The C{DKIM-Signature:} header field (CRLF-terminated) for the message
    read from C{source}, or None when it cannot be signed (its header
    section is larger than L{MAX_HEADER_BYTES} or never ends). Blocking:
    call it in a thread.
    """
    head = b""
    while b"\r\n\r\n" not in head:
        block = source.read(BLOCK)
        if not block or len(head) > MAX_HEADER_BYTES:
            return None
        head += block
    end = head.index(b"\r\n\r\n") + 4
    body = RelaxedBodyHash()
    body.update(head[end:])
    while True:
        block = source.read(BLOCK)
        if not block:
            break
        body.update(block)
    signer = _Signer(head[:end])
    present = {name.lower() for name, _ in signer.headers}
    if b"from" not in present:
        return None  # RFC 6376 5.4: From must be signed; a message without one is left unsigned
    wanted = [h.encode() for h in headers if h.lower().encode() in present and h.lower() != "from"]
    # From always (whatever headersToSign says), and twice: a From added later breaks the signature.
    wanted = [b"from", *wanted, b"from"]
    return signer.sign_prehashed(key, wanted, body.digest(), now, expiry)
