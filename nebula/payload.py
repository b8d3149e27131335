"""Read and verify CrAU update payloads: header, manifest, hashes and the version-2 signature.

Lives here: the trusted keys (TrustedKey, load_trusted_key, default_trusted_keys), the streaming
PayloadVerifier that checks a payload exactly as a Flatcar host will before it installs it, and
PayloadInfo, what the server needs to offer a verified file (size, SHA-1, SHA-256, delta or not).
Verification is two halves that can run in different places: `finish_facts()` checks the
structure and yields PayloadFacts (hashes, the digest of the signed bytes and the signature), and
`check_signature` checks those facts against the trusted keys. `nebula package add` reads a
local copy on the operator's machine, which does not know the server's keys, and the server
checks the signature facts it is sent.

Layout (all integers big-endian):

    [0, 4)                 b"CrAU"
    [4, 12)                format version, must be 1
    [12, 20)               manifest size M
    [20, 20 + M)           DeltaArchiveManifest (protobuf; 4 signatures_offset, 5 signatures_size,
                           8 old_partition_info, 9 new_partition_info)
    [20 + M, S)            data blobs, S = 20 + M + signatures_offset
    [S, S + sig_size)      Signatures (protobuf; repeated 1 Signature {1 version, 2 data}); the end
                           of the file

The signature a host checks is the first one with version 2: RSASSA-PKCS1-v1_5 with SHA-256 over
bytes [0, S). This mirrors update_engine, which recovers the signed digest with OpenSSL (PKCS#1
padding, SHA-256 DigestInfo) and compares it with its own digest of everything before the blob.
Later version-2 signatures are never looked at by a host, so they cannot rescue a payload here.

The verifier never holds the whole file: it hashes as bytes stream past and keeps only the
manifest (at most 16 MiB) and the signature blob (at most 64 KiB).

Imports nothing of Nebula except nebula.errors and nebula.protowire (its wire-format decoder).
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Final

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, utils
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from nebula.errors import (
    ConfigError,
    MalformedPayloadError,
    NotCrAUError,
    PayloadError,
    SignatureError,
    TruncatedPayloadError,
    UnsignedPayloadError,
)
from nebula.protowire import WireFormatError, iter_fields

MAGIC: Final = b"CrAU"
FORMAT_VERSION: Final = 1
HEADER_SIZE: Final = 20
SIGNATURE_VERSION: Final = 2
MAX_MANIFEST_SIZE: Final = 16 << 20
MAX_SIGNATURE_BLOB_SIZE: Final = 64 << 10
DEFAULT_KEY_FILE: Final = "flatcar-official-v2.pub.pem"

# What a file that is not a payload usually is, judged by its first bytes (at most 4 are shown).
_FORMAT_HINTS: Final = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zX", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"PK\x03\x04", "zip"),
    (b"\x7fELF", "an executable"),
    (b"<", "HTML or XML, an error page?"),
    (b"{", "JSON"),
)


# -- trusted keys ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """A public key whose version-2 signatures Nebula accepts."""

    name: str
    fingerprint: str  # hex SHA-256 of the DER SubjectPublicKeyInfo
    public_key: RSAPublicKey = field(compare=False, repr=False)

    def describe(self) -> str:
        return f"{self.name} sha256:{self.fingerprint}"


def load_trusted_key(pem: bytes, name: str) -> TrustedKey:
    """Parse one PEM RSA public key; raise ConfigError if it is not one."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"trusted key {name}: not a PEM public key ({exc})") from None
    if not isinstance(key, RSAPublicKey):
        raise ConfigError(
            f"trusted key {name}: a {type(key).__name__}, but update payloads are signed with RSA"
        )
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return TrustedKey(name=name, fingerprint=hashlib.sha256(der).hexdigest(), public_key=key)


def default_trusted_keys() -> list[TrustedKey]:
    """The key official Flatcar payloads are signed with, shipped in the nebula.keys package."""
    pem = resources.files("nebula.keys").joinpath(DEFAULT_KEY_FILE).read_bytes()
    return [load_trusted_key(pem, DEFAULT_KEY_FILE)]


# -- results and decoded structures ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PayloadInfo:
    """A payload that verified: what an Omaha response and the database need to know of it."""

    size: int  # whole file
    sha1: bytes  # whole file, 20 bytes
    sha256: bytes  # whole file, 32 bytes
    manifest_size: int
    is_delta: bool
    old_partition_size: int | None
    new_partition_size: int | None
    signer: TrustedKey

    @property
    def sha1_b64(self) -> str:
        return base64.b64encode(self.sha1).decode("ascii")

    @property
    def sha256_b64(self) -> str:
        return base64.b64encode(self.sha256).decode("ascii")

    @property
    def sha256_hex(self) -> str:
        return self.sha256.hex()


@dataclass(frozen=True, slots=True)
class PayloadFacts:
    """What a well-formed payload says of itself, before any key is consulted."""

    size: int
    sha1: bytes
    sha256: bytes
    manifest_size: int
    is_delta: bool
    old_partition_size: int | None
    new_partition_size: int | None
    signed_size: int  # bytes [0, signed_size) are what the signature covers
    signed_sha256: bytes  # their SHA-256: what the signature was made over
    signature: bytes  # the first version-2 signature, the one a host checks

    def verified(self, signer: TrustedKey) -> PayloadInfo:
        return PayloadInfo(
            size=self.size,
            sha1=self.sha1,
            sha256=self.sha256,
            manifest_size=self.manifest_size,
            is_delta=self.is_delta,
            old_partition_size=self.old_partition_size,
            new_partition_size=self.new_partition_size,
            signer=signer,
        )


@dataclass(frozen=True, slots=True)
class _InstallInfo:
    size: int | None
    hash: bytes | None


@dataclass(frozen=True, slots=True)
class _Manifest:
    signatures_offset: int | None
    signatures_size: int | None
    old_partition: _InstallInfo | None
    new_partition: _InstallInfo | None


def _decode_install_info(parts: list[memoryview], name: str) -> _InstallInfo | None:
    # proto2 merges repeated occurrences of a singular message field: scalars, last one wins.
    if not parts:
        return None
    size: int | None = None
    digest: bytes | None = None
    for part in parts:
        for f in iter_fields(part):
            if f.number == 1:
                size = f.as_uint64(f"{name}.size")
            elif f.number == 2:
                digest = bytes(f.as_bytes(f"{name}.hash"))
    return _InstallInfo(size, digest)


def _decode_manifest(buf: memoryview) -> _Manifest:
    offset: int | None = None
    size: int | None = None
    old: list[memoryview] = []
    new: list[memoryview] = []
    try:
        for f in iter_fields(buf):
            if f.number == 4:
                offset = f.as_uint64("signatures_offset")
            elif f.number == 5:
                size = f.as_uint64("signatures_size")
            elif f.number == 8:
                old.append(f.as_bytes("old_partition_info"))
            elif f.number == 9:
                new.append(f.as_bytes("new_partition_info"))
        old_info = _decode_install_info(old, "old_partition_info")
        new_info = _decode_install_info(new, "new_partition_info")
    except WireFormatError as exc:
        raise MalformedPayloadError(f"manifest does not decode: {exc}") from None
    return _Manifest(offset, size, old_info, new_info)


def _decode_signatures(blob: bytes) -> list[tuple[int | None, bytes]]:
    """(version, data) of each Signature in the blob, in order; version None when unset."""
    found: list[tuple[int | None, bytes]] = []
    try:
        for f in iter_fields(blob):
            if f.number != 1:
                continue
            version: int | None = None
            data = b""
            for g in iter_fields(f.as_bytes("signatures")):
                if g.number == 1:
                    version = g.as_uint32("version")
                elif g.number == 2:
                    data = bytes(g.as_bytes("data"))
            found.append((version, data))
    except WireFormatError as exc:
        raise MalformedPayloadError(f"signature blob does not decode: {exc}") from None
    return found


def _not_crau(head: bytes) -> NotCrAUError:
    hint = next((f" ({name}?)" for sig, name in _FORMAT_HINTS if head.startswith(sig)), "")
    return NotCrAUError(f"not a CrAU payload: file starts with {head!r}{hint}")


# -- the verifier ------------------------------------------------------------------------------


class PayloadVerifier:
    """Incremental: feed() chunks of any size in order, then finish(). Never holds the whole file:
    memory is O(manifest + signature blob), both bounded (refuse a manifest > 16 MiB or a
    signature blob > 64 KiB as MalformedPayloadError).

    feed() raises NotCrAUError once the first 4 (magic) or 20 (version) bytes are in, and
    MalformedPayloadError once the manifest is in; finish() raises everything else. Decisions
    never depend on how the bytes were split into chunks. After an error, every later call
    raises the same error.
    """

    def __init__(self, trusted_keys: Sequence[TrustedKey]) -> None:
        self._keys = tuple(trusted_keys)
        self._pos = 0  # bytes fed so far
        self._header = bytearray()
        self._manifest_size: int | None = None
        self._manifest_buf = bytearray()
        self._manifest: _Manifest | None = None
        self._sig_start: int | None = None  # absolute offsets of the signature blob
        self._sig_end: int | None = None
        self._sig_blob = bytearray()
        self._sha1 = hashlib.sha1()
        self._sha256 = hashlib.sha256()
        self._signed_digest: bytes | None = None  # SHA-256 of [0, sig_start)
        self._error: PayloadError | None = None
        self._finished = False

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        """Consume the next bytes of the file. The chunk is not kept after the call returns."""
        if self._finished:
            raise RuntimeError("PayloadVerifier.feed() called after finish()")
        if self._error is not None:
            raise self._error
        view = memoryview(chunk)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        try:
            while len(view):
                taken = self._step(view)
                segment = view[:taken]
                self._sha1.update(segment)
                self._sha256.update(segment)
                self._pos += taken
                view = view[taken:]
                self._after_step()
        except PayloadError as exc:
            self._error = exc
            raise

    def _step(self, view: memoryview) -> int:
        """Route the head of `view` to the region it belongs to; return how many bytes it took."""
        if self._manifest_size is None:
            take = min(len(view), HEADER_SIZE - len(self._header))
            self._header += view[:take]
            return take
        if self._manifest is None:
            take = min(len(view), self._manifest_size - len(self._manifest_buf))
            self._manifest_buf += view[:take]
            return take
        if self._sig_start is None or self._sig_end is None:
            return len(view)  # unsigned: finish() will say so; nothing more to keep
        if self._pos < self._sig_start:
            return min(len(view), self._sig_start - self._pos)
        if self._pos < self._sig_end:
            take = min(len(view), self._sig_end - self._pos)
            self._sig_blob += view[:take]
            return take
        return len(view)  # trailing data: finish() reports it with the final size

    def _after_step(self) -> None:
        """Act on a region that has just become complete."""
        if self._manifest_size is None:
            if len(self._header) >= len(MAGIC) and self._header[:4] != MAGIC:
                raise _not_crau(bytes(self._header[:4]))
            if len(self._header) == HEADER_SIZE:
                self._parse_header()
        if (
            self._manifest is None
            and self._manifest_size is not None
            and len(self._manifest_buf) == self._manifest_size
        ):
            self._parse_manifest()
        if self._signed_digest is None and self._pos == self._sig_start:
            self._signed_digest = self._sha256.copy().digest()

    def _parse_header(self) -> None:
        version = int.from_bytes(self._header[4:12], "big")
        if version != FORMAT_VERSION:
            raise NotCrAUError(
                f"not a CrAU payload: format version {version}, expected {FORMAT_VERSION}"
            )
        size = int.from_bytes(self._header[12:20], "big")
        if size > MAX_MANIFEST_SIZE:
            raise MalformedPayloadError(
                f"manifest size {size} bytes exceeds the limit of {MAX_MANIFEST_SIZE} bytes"
            )
        self._manifest_size = size

    def _parse_manifest(self) -> None:
        manifest = _decode_manifest(memoryview(self._manifest_buf))
        self._manifest = manifest
        self._manifest_buf = bytearray()
        if manifest.signatures_offset is None or manifest.signatures_size is None:
            return
        if manifest.signatures_size > MAX_SIGNATURE_BLOB_SIZE:
            raise MalformedPayloadError(
                f"signature blob size {manifest.signatures_size} bytes exceeds the limit of "
                f"{MAX_SIGNATURE_BLOB_SIZE} bytes"
            )
        self._sig_start = self._pos + manifest.signatures_offset
        self._sig_end = self._sig_start + manifest.signatures_size

    def finish(self) -> PayloadInfo:
        """Decide, once the whole file was fed: return its PayloadInfo or raise a PayloadError."""
        facts = self.finish_facts()
        try:
            signer = check_signature(
                facts.signed_sha256, facts.signature, self._keys, facts.signed_size
            )
        except PayloadError as exc:
            self._error = exc
            raise
        return facts.verified(signer)

    def finish_facts(self) -> PayloadFacts:
        """Check everything but the signature's key, once the whole file was fed: return what
        check_signature needs, or raise a PayloadError (the trusted keys are not used)."""
        if self._finished:
            raise RuntimeError("PayloadVerifier.finish() called twice")
        if self._error is not None:
            raise self._error
        self._finished = True
        try:
            return self._conclude()
        except PayloadError as exc:
            self._error = exc
            raise

    def _conclude(self) -> PayloadFacts:
        size = self._pos
        if self._manifest_size is None:
            if size == 0:
                raise NotCrAUError("not a CrAU payload: the file is empty")
            if not MAGIC.startswith(bytes(self._header[:4])):
                raise _not_crau(bytes(self._header[:4]))
            raise TruncatedPayloadError(
                f"truncated: the header needs {HEADER_SIZE} bytes, file ends after {size}"
            )
        manifest = self._manifest
        if manifest is None:
            raise TruncatedPayloadError(
                f"truncated: header and manifest need {HEADER_SIZE + self._manifest_size} bytes, "
                f"file ends after {size}"
            )
        if self._sig_start is None or self._sig_end is None:
            missing = [
                name
                for name, value in (
                    ("signatures_offset (field 4)", manifest.signatures_offset),
                    ("signatures_size (field 5)", manifest.signatures_size),
                )
                if value is None
            ]
            raise UnsignedPayloadError(
                f"unsigned: the manifest has no {' and no '.join(missing)}, so no signature blob"
            )
        if size < self._sig_end:
            raise TruncatedPayloadError(
                f"truncated: the signature blob spans bytes [{self._sig_start}, {self._sig_end}), "
                f"file ends after {size}"
            )
        if size > self._sig_end:
            raise MalformedPayloadError(
                f"trailing data after signature blob: it ends at byte {self._sig_end}, "
                f"the file has {size} bytes ({size - self._sig_end} extra)"
            )
        signatures = _decode_signatures(bytes(self._sig_blob))
        candidates = [data for version, data in signatures if version == SIGNATURE_VERSION]
        if not candidates:
            versions = ", ".join("unset" if v is None else str(v) for v, _ in signatures)
            raise UnsignedPayloadError(
                f"no version-{SIGNATURE_VERSION} signature (found versions [{versions}])"
            )
        digest = self._signed_digest
        if digest is None:  # unreachable: the file reached the signature blob
            raise RuntimeError("signed digest missing although the signature blob was read")
        old = manifest.old_partition
        new = manifest.new_partition
        return PayloadFacts(
            size=size,
            sha1=self._sha1.digest(),
            sha256=self._sha256.digest(),
            manifest_size=self._manifest_size,
            is_delta=old is not None and (bool(old.size) or old.hash is not None),
            old_partition_size=None if old is None else old.size,
            new_partition_size=None if new is None else new.size,
            signed_size=self._sig_start,
            signed_sha256=digest,
            signature=candidates[0],
        )


def check_signature(
    signed_sha256: bytes, signature: bytes, trusted_keys: Sequence[TrustedKey], signed_size: int
) -> TrustedKey:
    """The trusted key whose RSASSA-PKCS1-v1_5 signature over a SHA-256 computed earlier, maybe
    elsewhere (hence Prehashed), `signature` is; SignatureError if none. `signed_size`, how many
    bytes the digest covers, is only for the message."""
    digest = signed_sha256
    algorithm = utils.Prehashed(hashes.SHA256())
    for key in trusted_keys:
        try:
            key.public_key.verify(signature, digest, padding.PKCS1v15(), algorithm)
        except (InvalidSignature, ValueError):
            continue
        return key
    # Refused. Tell "signed by a trusted key, then modified" from "signed by another key".
    for key in trusted_keys:
        try:
            signed = key.public_key.recover_data_from_signature(
                signature, padding.PKCS1v15(), hashes.SHA256()
            )
        except (InvalidSignature, ValueError):
            continue
        raise SignatureError(
            f"signature by trusted key {key.describe()} is over different content: bytes "
            f"[0, {signed_size}) have SHA-256 {digest.hex()}, the signature covers "
            f"{signed.hex()} (the file was modified or corrupted after signing)"
        )
    trusted = "; ".join(k.describe() for k in trusted_keys) or "none configured"
    raise SignatureError(
        f"signature does not verify against any trusted key ({len(signature)}-byte "
        f"version-{SIGNATURE_VERSION} signature; trusted: {trusted})"
    )


def verify_file(
    path: str | os.PathLike[str],
    trusted_keys: Sequence[TrustedKey],
    chunk_size: int = 1 << 20,
) -> PayloadInfo:
    """Verify the payload file at `path` in chunks of `chunk_size` bytes.

    Raises a PayloadError subclass for a refused payload; OSError if the file cannot be read.
    """
    return _feed_file(path, PayloadVerifier(trusted_keys), chunk_size).finish()


def read_facts(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> PayloadFacts:
    """Check the structure of the payload file at `path` and return its facts, for a signature
    check elsewhere (check_signature). Raises as verify_file does, the signature's key aside."""
    return _feed_file(path, PayloadVerifier(()), chunk_size).finish_facts()


def _feed_file(
    path: str | os.PathLike[str], verifier: PayloadVerifier, chunk_size: int
) -> PayloadVerifier:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    buf = bytearray(chunk_size)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            verifier.feed(view[:n])
    return verifier
