"""Write CrAU update payloads, signed like Flatcar's: for tests, the benchmark and sample data.

Lives here: a tiny protobuf encoder, the DeltaArchiveManifest and Signatures encoders, and
build_payload / write_payload, which lay out header + manifest + data + signature blob and sign
everything before the blob with RSASSA-PKCS1-v1_5 / SHA-256, as Flatcar's signing does.

Like update_engine's generator, the blob size is fixed before signing by encoding placeholder
signatures of the final length (an RSA signature is exactly as long as the modulus), because the
manifest, which is signed, records that size.

Imports nothing of Nebula: it is an independent implementation of the format that nebula.payload
(the reader) must agree with. Nebula never writes payloads it serves: real ones come signed
from Flatcar or from an operator's build; these are for trying a server out and for tests.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Sequence
from typing import BinaryIO

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

BLOCK_SIZE = 4096
DEFAULT_DATA = b"Nebula test payload data blob.\n" * 64


# -- protobuf encoding -------------------------------------------------------------------------


def varint(value: int) -> bytes:
    if value < 0:
        raise ValueError("varints here are unsigned")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field_varint(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def field_bytes(number: int, data: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(data)) + data


# -- manifest and signatures -------------------------------------------------------------------


def install_info(size: int, digest: bytes | None) -> bytes:
    """InstallInfo {1 size, 2 hash}."""
    return field_varint(1, size) + (field_bytes(2, digest) if digest is not None else b"")


def replace_operation(data_offset: int, data_length: int) -> bytes:
    """InstallOperation {1 type=REPLACE, 2 data_offset, 3 data_length, 6 dst_extents}."""
    blocks = -(-data_length // BLOCK_SIZE)
    extent = field_varint(1, 0) + field_varint(2, blocks)  # Extent {1 start_block, 2 num_blocks}
    return (
        field_varint(1, 0)
        + field_varint(2, data_offset)
        + field_varint(3, data_length)
        + field_bytes(6, extent)
    )


def manifest(
    *,
    data_size: int,
    new_hash: bytes | None,
    old_info: tuple[int, bytes | None] | None = None,
    signatures_offset: int | None = None,
    signatures_size: int | None = None,
) -> bytes:
    """A minimal DeltaArchiveManifest in field-number order, as protobuf serializes it."""
    out = field_bytes(1, replace_operation(0, data_size)) if data_size else b""
    out += field_varint(3, BLOCK_SIZE)
    if signatures_offset is not None:
        out += field_varint(4, signatures_offset)
    if signatures_size is not None:
        out += field_varint(5, signatures_size)
    if old_info is not None:
        out += field_bytes(8, install_info(*old_info))
    out += field_bytes(9, install_info(data_size, new_hash))
    return out


def signatures_blob(signatures: Sequence[tuple[int, bytes]]) -> bytes:
    """Signatures {repeated 1 Signature {1 version, 2 data}}."""
    return b"".join(
        field_bytes(1, field_varint(1, version) + field_bytes(2, data))
        for version, data in signatures
    )


def header(manifest_size: int, version: int = 1) -> bytes:
    return b"CrAU" + version.to_bytes(8, "big") + manifest_size.to_bytes(8, "big")


# -- keys --------------------------------------------------------------------------------------


def make_rsa_key() -> RSAPrivateKey:
    """A fresh 2048-bit key, the size Flatcar uses."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def sign_digest(key: RSAPrivateKey, digest: bytes) -> bytes:
    """RSASSA-PKCS1-v1_5 over a SHA-256 digest."""
    return key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))


# -- whole payloads ----------------------------------------------------------------------------


def write_payload(
    out: BinaryIO,
    signers: Sequence[tuple[int, RSAPrivateKey]],
    *,
    data: Iterable[bytes],
    data_size: int,
    data_hash: bytes | None = None,
    delta: bool = False,
    corrupt_signature: bool = False,
) -> None:
    """Stream a payload to `out`: header, manifest, `data` (exactly `data_size` bytes), blob.

    `signers` gives (version, key) per signature, in blob order; empty means unsigned (the
    manifest then has no signatures_offset / signatures_size). `corrupt_signature` flips one
    bit in the last signature after signing.
    """
    placeholder = signatures_blob([(v, bytes(k.key_size // 8)) for v, k in signers])
    old_info = (data_size, hashlib.sha256(b"old " + (data_hash or b"")).digest()) if delta else None
    m = manifest(
        data_size=data_size,
        new_hash=data_hash,
        old_info=old_info,
        signatures_offset=data_size if signers else None,
        signatures_size=len(placeholder) if signers else None,
    )
    hasher = hashlib.sha256()
    for part in (header(len(m)), m):
        out.write(part)
        hasher.update(part)
    written = 0
    for part in data:
        out.write(part)
        hasher.update(part)
        written += len(part)
    if written != data_size:
        raise ValueError(f"data has {written} bytes, data_size says {data_size}")
    if not signers:
        return
    digest = hasher.digest()
    sigs = [(version, sign_digest(key, digest)) for version, key in signers]
    if corrupt_signature:
        version, sig = sigs[-1]
        sigs[-1] = (version, sig[:100] + bytes([sig[100] ^ 0x01]) + sig[101:])
    blob = signatures_blob(sigs)
    if len(blob) != len(placeholder):
        raise RuntimeError(f"signature blob is {len(blob)} bytes, manifest says {len(placeholder)}")
    out.write(blob)


def build_payload(
    key: RSAPrivateKey | None,
    *,
    data: bytes = DEFAULT_DATA,
    delta: bool = False,
    sig_version: int = 2,
    corrupt_signature: bool = False,
    extra_keys: Sequence[RSAPrivateKey] = (),
) -> bytes:
    """A whole payload in memory, signed by `key` with a `sig_version` signature.

    `extra_keys` add signatures before `key`'s, with version 1 each, the way Flatcar's signing
    script orders several keys (the last one gets version 2). A host, and nebula.payload, only
    check the first version-2 signature, so extra keys never make a payload acceptable.
    key=None gives an unsigned payload (extra_keys are then ignored).
    """
    signers: list[tuple[int, RSAPrivateKey]] = []
    if key is not None:
        signers = [(1, k) for k in extra_keys] + [(sig_version, key)]
    out = io.BytesIO()
    write_payload(
        out,
        signers,
        data=[data],
        data_size=len(data),
        data_hash=hashlib.sha256(data).digest(),
        delta=delta,
        corrupt_signature=corrupt_signature,
    )
    return out.getvalue()
