"""Tests of nebula.payload (and its wire-format decoder nebula.protowire), as tables of cases.

Payloads come from tests/crau.py, an independent builder of the format. Short files: fewer than
4 bytes that match the start of b"CrAU" are TruncatedPayloadError; bytes that do not match the
magic are NotCrAUError; an empty file is NotCrAUError.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import io
import os
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nebula import payload as pl
from nebula import protowire as pw
from nebula.errors import (
    ConfigError,
    MalformedPayloadError,
    NotCrAUError,
    PayloadError,
    SignatureError,
    TruncatedPayloadError,
    UnsignedPayloadError,
)
from tests import crau

SIG_BLOB_SIZE = len(crau.signatures_blob([(2, bytes(256))]))


@dataclass(frozen=True)
class Keys:
    main: RSAPrivateKey
    other: RSAPrivateKey
    third: RSAPrivateKey

    def trusted(self, *keys: RSAPrivateKey) -> list[pl.TrustedKey]:
        names = {id(self.main): "main", id(self.other): "other", id(self.third): "third"}
        return [pl.load_trusted_key(crau.public_pem(k), names[id(k)]) for k in keys]


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(crau.make_rsa_key(), crau.make_rsa_key(), crau.make_rsa_key())


@pytest.fixture(scope="module")
def valid(keys: Keys) -> bytes:
    return crau.build_payload(keys.main)


def verify(data: bytes, trusted: list[pl.TrustedKey], chunk: int = 1 << 20) -> pl.PayloadInfo:
    v = pl.PayloadVerifier(trusted)
    for i in range(0, len(data), chunk):
        v.feed(data[i : i + chunk])
    return v.finish()


def outcome(data: bytes, trusted: list[pl.TrustedKey], chunk: int) -> object:
    try:
        return verify(data, trusted, chunk)
    except PayloadError as exc:
        return (type(exc), str(exc))


def manifest_size(data: bytes) -> int:
    return int.from_bytes(data[12:20], "big")


def with_manifest(m: bytes, tail: bytes = b"") -> bytes:
    return crau.header(len(m)) + m + tail


def fingerprint(key: RSAPrivateKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


# -- accepted ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("delta", "data"),
    [
        (False, crau.DEFAULT_DATA),
        (True, crau.DEFAULT_DATA),
        (False, b""),
        (False, os.urandom(9999)),
    ],
)
def test_valid_payload_is_accepted(keys: Keys, delta: bool, data: bytes) -> None:
    raw = crau.build_payload(keys.main, data=data, delta=delta)
    info = verify(raw, keys.trusted(keys.main))
    assert info.size == len(raw)
    assert info.sha1 == hashlib.sha1(raw).digest()
    assert info.sha256 == hashlib.sha256(raw).digest()
    assert info.sha256_hex == hashlib.sha256(raw).hexdigest()
    assert info.sha1_b64 == base64.b64encode(hashlib.sha1(raw).digest()).decode()
    assert info.sha256_b64 == base64.b64encode(info.sha256).decode()
    assert info.manifest_size == manifest_size(raw)
    assert info.is_delta is delta
    assert info.old_partition_size == (len(data) if delta else None)
    assert info.new_partition_size == len(data)
    assert info.signer.fingerprint == fingerprint(keys.main)
    assert info.signer.name == "main"


def test_signer_is_the_key_that_verifies(keys: Keys) -> None:
    raw = crau.build_payload(keys.other)
    info = verify(raw, keys.trusted(keys.main, keys.other))
    assert info.signer.name == "other"
    assert info.signer.fingerprint == fingerprint(keys.other)


def test_extra_version1_signatures_are_ignored(keys: Keys) -> None:
    raw = crau.build_payload(keys.main, extra_keys=[keys.other, keys.third])
    assert verify(raw, keys.trusted(keys.main)).signer.name == "main"
    # The extra keys signed too, but with version 1: a host (version 2) never looks at them.
    with pytest.raises(SignatureError, match="does not verify against any trusted key"):
        verify(raw, keys.trusted(keys.other, keys.third))


@pytest.mark.parametrize(
    ("order", "trusted", "accepted"),
    [
        (("main", "other"), ("main",), True),
        (("main", "other"), ("other",), False),  # only the first version-2 signature counts
        (("other", "main"), ("main",), False),
        (("other", "main"), ("main", "other"), True),
    ],
)
def test_only_first_version2_signature_counts(
    keys: Keys, order: tuple[str, str], trusted: tuple[str, ...], accepted: bool
) -> None:
    by_name = {"main": keys.main, "other": keys.other}
    out = io.BytesIO()
    data = crau.DEFAULT_DATA
    crau.write_payload(out, [(2, by_name[n]) for n in order], data=[data], data_size=len(data))
    trusted_keys = keys.trusted(*(by_name[n] for n in trusted))
    if accepted:
        assert verify(out.getvalue(), trusted_keys).signer.name == order[0]
    else:
        with pytest.raises(SignatureError):
            verify(out.getvalue(), trusted_keys)


# -- refused: signatures -----------------------------------------------------------------------


def test_wrong_key_is_refused(keys: Keys, valid: bytes) -> None:
    with pytest.raises(SignatureError) as err:
        verify(valid, keys.trusted(keys.other, keys.third))
    msg = str(err.value)
    assert "does not verify against any trusted key" in msg
    assert fingerprint(keys.other) in msg and fingerprint(keys.third) in msg


def test_no_trusted_keys_is_refused(valid: bytes) -> None:
    with pytest.raises(SignatureError, match="trusted: none configured"):
        verify(valid, [])


def test_corrupted_signature_is_refused(keys: Keys) -> None:
    raw = crau.build_payload(keys.main, corrupt_signature=True)
    with pytest.raises(SignatureError, match="does not verify"):
        verify(raw, keys.trusted(keys.main))


def signed_region_offsets(raw: bytes) -> dict[str, int]:
    m = manifest_size(raw)
    sig_start = len(raw) - SIG_BLOB_SIZE
    new_hash_end = 20 + m  # the manifest ends with new_partition_info's 32-byte hash
    return {
        "manifest: new_partition_info hash": new_hash_end - 5,
        "first data byte": 20 + m,
        "middle of data": (20 + m + sig_start) // 2,
        "last data byte": sig_start - 1,
    }


@pytest.mark.parametrize(
    "where",
    ["manifest: new_partition_info hash", "first data byte", "middle of data", "last data byte"],
)
def test_flipped_byte_in_signed_region_is_refused(keys: Keys, valid: bytes, where: str) -> None:
    pos = signed_region_offsets(valid)[where]
    raw = bytearray(valid)
    raw[pos] ^= 0x40
    with pytest.raises(SignatureError, match=r"over different content.*modified or corrupted"):
        verify(bytes(raw), keys.trusted(keys.main))


@pytest.mark.parametrize(
    ("versions", "message"),
    [((1,), r"found versions \[1\]"), ((1, 3), r"found versions \[1, 3\]")],
)
def test_no_version2_signature_is_unsigned(
    keys: Keys, versions: tuple[int, ...], message: str
) -> None:
    out = io.BytesIO()
    data = crau.DEFAULT_DATA
    crau.write_payload(out, [(v, keys.main) for v in versions], data=[data], data_size=len(data))
    with pytest.raises(UnsignedPayloadError, match=r"no version-2 signature \(" + message):
        verify(out.getvalue(), keys.trusted(keys.main))


def test_sig_version_1_via_build_payload_is_unsigned(keys: Keys) -> None:
    raw = crau.build_payload(keys.main, sig_version=1)
    with pytest.raises(UnsignedPayloadError, match=r"found versions \[1\]"):
        verify(raw, keys.trusted(keys.main))


@pytest.mark.parametrize(
    ("offset", "size", "message"),
    [
        (None, None, "no signatures_offset .field 4. and no signatures_size .field 5."),
        (0, None, r"no signatures_size \(field 5\)"),
        (None, 0, r"no signatures_offset \(field 4\)"),
    ],
)
def test_manifest_without_signature_fields_is_unsigned(
    keys: Keys, offset: int | None, size: int | None, message: str
) -> None:
    m = crau.manifest(data_size=0, new_hash=None, signatures_offset=offset, signatures_size=size)
    with pytest.raises(UnsignedPayloadError, match=message):
        verify(with_manifest(m), keys.trusted(keys.main))


def test_unsigned_payload_from_builder(keys: Keys) -> None:
    with pytest.raises(UnsignedPayloadError, match="unsigned"):
        verify(crau.build_payload(None), keys.trusted(keys.main))


def test_empty_signature_blob_is_unsigned(keys: Keys) -> None:
    m = crau.manifest(data_size=0, new_hash=None, signatures_offset=0, signatures_size=0)
    with pytest.raises(UnsignedPayloadError, match=r"found versions \[\]"):
        verify(with_manifest(m), keys.trusted(keys.main))


@pytest.mark.parametrize("sig", [b"", b"\x00" * 255, b"\x01" * 256, b"\xff" * 257])
def test_bogus_signature_data_is_refused(keys: Keys, sig: bytes) -> None:
    blob = crau.signatures_blob([(2, sig)])
    m = crau.manifest(data_size=0, new_hash=None, signatures_offset=0, signatures_size=len(blob))
    with pytest.raises(SignatureError, match=f"{len(sig)}-byte version-2 signature"):
        verify(with_manifest(m, blob), keys.trusted(keys.main))


# -- refused: not a payload, truncated, malformed ----------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "the file is empty"),
        (gzip.compress(b"hello" * 100), r"file starts with b'\\x1f\\x8b\\x08\\x00' \(gzip\?\)"),
        (b"<html><body>404</body></html>", r"file starts with b'<htm' \(HTML or XML"),
        (bytes(range(200, 256)) * 3, r"file starts with b'\\xc8\\xc9\\xca\\xcb'$"),
        (b"\x1f", r"file starts with b'\\x1f'"),
        (b"CrA!" + bytes(100), r"file starts with b'CrA!'"),
        (b"crau" + bytes(16), r"file starts with b'crau'"),
        (crau.header(10, version=2) + bytes(10), "format version 2, expected 1"),
        (crau.header(10, version=0) + bytes(10), "format version 0, expected 1"),
    ],
)
def test_not_crau(data: bytes, message: str) -> None:
    with pytest.raises(NotCrAUError, match="not a CrAU payload: " + message):
        verify(data, [])


def truncation_points(raw: bytes) -> dict[str, int]:
    m = manifest_size(raw)
    sig_start = len(raw) - SIG_BLOB_SIZE
    return {
        "1 byte of magic": 1,
        "magic only": 4,
        "inside header": 11,
        "header only": 20,
        "inside manifest": 20 + m // 2,
        "manifest, no data": 20 + m,
        "inside data": 20 + m + 100,
        "data, no signature blob": sig_start,
        "inside signature blob": sig_start + 10,
        "one byte short": len(raw) - 1,
    }


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("1 byte of magic", "the header needs 20 bytes, file ends after 1"),
        ("magic only", "the header needs 20 bytes, file ends after 4"),
        ("inside header", "the header needs 20 bytes, file ends after 11"),
        ("header only", r"header and manifest need \d+ bytes, file ends after 20"),
        ("inside manifest", r"header and manifest need \d+ bytes, file ends after \d+"),
        ("manifest, no data", r"the signature blob spans bytes \[\d+, \d+\), file ends after"),
        ("inside data", "the signature blob spans bytes"),
        ("data, no signature blob", "the signature blob spans bytes"),
        ("inside signature blob", "the signature blob spans bytes"),
        ("one byte short", "the signature blob spans bytes"),
    ],
)
def test_truncated(keys: Keys, valid: bytes, where: str, message: str) -> None:
    cut = truncation_points(valid)[where]
    with pytest.raises(TruncatedPayloadError, match="truncated: " + message):
        verify(valid[:cut], keys.trusted(keys.main))


def test_trailing_data_is_malformed(keys: Keys, valid: bytes) -> None:
    with pytest.raises(MalformedPayloadError, match=r"trailing data after signature blob.*7 extra"):
        verify(valid + b"garbage", keys.trusted(keys.main))


@pytest.mark.parametrize("size", [2**60, 2**64 - 1, pl.MAX_MANIFEST_SIZE + 1])
def test_huge_manifest_size_is_refused_at_once(size: int) -> None:
    v = pl.PayloadVerifier([])
    with pytest.raises(MalformedPayloadError, match=f"manifest size {size} bytes exceeds"):
        v.feed(crau.header(size))  # refused by feed(), before any allocation
    with pytest.raises(MalformedPayloadError):
        v.finish()


def test_huge_signature_blob_is_refused() -> None:
    size = pl.MAX_SIGNATURE_BLOB_SIZE + 1
    m = crau.manifest(data_size=0, new_hash=None, signatures_offset=0, signatures_size=size)
    v = pl.PayloadVerifier([])
    with pytest.raises(MalformedPayloadError, match=f"signature blob size {size} bytes exceeds"):
        v.feed(with_manifest(m))


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        (b"\x08" + b"\xff" * 10 + b"\x01", "longer than 10 bytes"),
        (b"\x08" + b"\xff" * 9 + b"\x02", "exceeds 64 bits"),
        (b"\x08\x80", "runs past the end"),
        (b"\x0b", "groups"),
        (b"\x0c", "groups"),
        (b"\x0e", "invalid wire type 6"),
        (b"\x0f", "invalid wire type 7"),
        (b"\x00\x01", "invalid field number 0"),
        (b"\x0a\x05abc", "length 5 runs past the end"),
        (b"\x09\x00\x00", "8-byte value runs past the end"),
        (b"\x22\x01\x00", r"field 4 \(signatures_offset\) has wire type 2"),
        (b"\x29" + bytes(8), r"field 5 \(signatures_size\) has wire type 1"),
        (b"\x4a\x02\x08\x80", r"varint at offset 1 runs past the end"),
        (b"\x4a\x02\x12\x05", "length 5 runs past the end"),
        (b"\x42\x01\x08\x08\x01", "runs past the end"),  # inner length cuts into the next field
        (b"\x48\x01", r"field 9 \(new_partition_info\) has wire type 0"),
    ],
)
def test_malformed_manifest(manifest: bytes, message: str) -> None:
    v = pl.PayloadVerifier([])
    with pytest.raises(MalformedPayloadError, match="manifest does not decode: .*" + message):
        v.feed(with_manifest(manifest))


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"\x0a\x05\x08\x02", "length 5 runs past the end"),
        (b"\x0a\x02\x10\x02", r"field 2 \(data\) has wire type 0"),
        (b"\x0a\x02\x0a\x00", r"field 1 \(version\) has wire type 2"),
        (b"\x08\x02", r"field 1 \(signatures\) has wire type 0"),
        (b"\x0b\x0c", "groups"),
    ],
)
def test_malformed_signature_blob(blob: bytes, message: str) -> None:
    m = crau.manifest(data_size=0, new_hash=None, signatures_offset=0, signatures_size=len(blob))
    with pytest.raises(MalformedPayloadError, match="signature blob does not decode: .*" + message):
        verify(with_manifest(m, blob), [])


def test_unknown_fields_are_skipped(keys: Keys) -> None:
    # Build a payload whose manifest carries unknown fields of every legal wire type.
    unknown = (
        crau.field_varint(20, 2**64 - 1)
        + b"\xa9\x01"
        + bytes(8)  # field 21, 64-bit
        + crau.field_bytes(22, b"x" * 300)
        + b"\xb5\x01"
        + bytes(4)  # field 22, 32-bit
    )
    blob_len = SIG_BLOB_SIZE
    m = unknown + crau.manifest(
        data_size=0, new_hash=b"h" * 32, signatures_offset=0, signatures_size=blob_len
    )
    prefix = with_manifest(m)
    sig = crau.sign_digest(keys.main, hashlib.sha256(prefix).digest())
    raw = prefix + crau.signatures_blob([(2, sig)])
    assert verify(raw, keys.trusted(keys.main)).new_partition_size == 0


# -- streaming behaviour -----------------------------------------------------------------------


def test_chunk_size_does_not_matter(keys: Keys) -> None:
    valid = crau.build_payload(keys.main, data=os.urandom(5000), delta=True)
    cases = [
        valid,
        valid[:-1],
        valid + b"x",
        valid[:30],
        b"\x1f\x8b\x08",
        crau.build_payload(None),
        crau.build_payload(keys.other),
        with_manifest(b"\x0b"),
    ]
    trusted = keys.trusted(keys.main)
    for data in cases:
        results = [outcome(data, trusted, chunk) for chunk in (1, 7, 1 << 20)]
        assert results[0] == results[1] == results[2], data[:40]


def test_error_is_sticky_and_finish_is_final(keys: Keys, valid: bytes) -> None:
    v = pl.PayloadVerifier(keys.trusted(keys.main))
    with pytest.raises(NotCrAUError) as first:
        v.feed(b"\x1f\x8b\x08\x00")
    with pytest.raises(NotCrAUError) as again:
        v.feed(b"more")
    assert again.value is first.value
    v = pl.PayloadVerifier(keys.trusted(keys.main))
    v.feed(valid)
    v.finish()
    with pytest.raises(RuntimeError):
        v.feed(b"x")


def test_feed_accepts_memoryview_and_bytearray(keys: Keys, valid: bytes) -> None:
    v = pl.PayloadVerifier(keys.trusted(keys.main))
    v.feed(memoryview(valid)[:100])
    v.feed(bytearray(valid[100:]))
    assert v.finish().size == len(valid)


def test_verify_file(tmp_path: Path, keys: Keys, valid: bytes) -> None:
    path = tmp_path / "flatcar_production_update.gz"
    path.write_bytes(valid)
    for chunk in (1, 64, 1 << 20):
        assert pl.verify_file(path, keys.trusted(keys.main), chunk_size=chunk).size == len(valid)
    path.write_bytes(valid[:-5])
    with pytest.raises(TruncatedPayloadError):
        pl.verify_file(str(path), keys.trusted(keys.main))


def test_memory_stays_bounded_for_a_large_payload(tmp_path: Path, keys: Keys) -> None:
    mib = 1 << 20
    block = os.urandom(mib)
    path = tmp_path / "big.gz"
    with path.open("wb") as f:
        crau.write_payload(f, [(2, keys.main)], data=[block] * 64, data_size=64 * mib)
    del block
    tracemalloc.start()
    try:
        info = pl.verify_file(path, keys.trusted(keys.main))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.size == path.stat().st_size > 64 * mib
    assert peak < 3 * mib, f"peak traced memory {peak} bytes"


# -- keys --------------------------------------------------------------------------------------


def test_default_trusted_key_is_flatcars() -> None:
    (key,) = pl.default_trusted_keys()
    assert key.name == "flatcar-official-v2.pub.pem"
    der = key.public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert key.fingerprint == hashlib.sha256(der).hexdigest()
    assert key.public_key.key_size == 2048
    assert der.hex().startswith("30820122300d06092a864886f70d0101010500")  # RSA SPKI


def test_load_trusted_key_accepts_pkcs1_pem(keys: Keys) -> None:
    pkcs1 = keys.main.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
    )
    assert pl.load_trusted_key(pkcs1, "k").fingerprint == fingerprint(keys.main)


@pytest.mark.parametrize(
    ("make_pem", "message"),
    [
        (lambda: b"not a key", "not a PEM public key"),
        (lambda: b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "not a PEM"),
        (
            lambda: (
                ec.generate_private_key(ec.SECP256R1())
                .public_key()
                .public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            ),
            "signed with RSA",
        ),
    ],
)
def test_load_trusted_key_refuses_non_rsa_or_garbage(
    make_pem: Callable[[], bytes], message: str
) -> None:
    with pytest.raises(ConfigError, match=f"trusted key bad.pem: .*{message}"):
        pl.load_trusted_key(make_pem(), "bad.pem")


def test_raw_rsa_over_padded_hash_is_what_we_verify(keys: Keys, valid: bytes) -> None:
    # Flatcar's signing script signs with raw RSA over 0x00 0x01 0xff.. 0x00 DigestInfo(SHA-256)
    # hash; update_engine recovers the digest with PKCS#1 padding. That is RSASSA-PKCS1-v1_5.
    digest_info = bytes.fromhex("3031300d060960864801650304020105000420")
    prefix = valid[: len(valid) - SIG_BLOB_SIZE]
    digest = hashlib.sha256(prefix).digest()
    padded = b"\x00\x01" + b"\xff" * (256 - 3 - len(digest_info) - 32) + b"\x00" + digest_info
    priv = keys.main.private_numbers()
    raw = pow(int.from_bytes(padded + digest, "big"), priv.d, priv.public_numbers.n)
    signature = raw.to_bytes(256, "big")
    assert signature == crau.sign_digest(keys.main, digest)
    assert valid.endswith(crau.signatures_blob([(2, signature)]))


# -- protowire ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoded", "value"),
    [
        (b"\x00", 0),
        (b"\x7f", 127),
        (b"\x80\x01", 128),
        (b"\x80\x00", 0),
        (b"\xff" * 9 + b"\x01", 2**64 - 1),
    ],
)
def test_varint(encoded: bytes, value: int) -> None:
    assert pw.read_varint(memoryview(encoded), 0) == (value, len(encoded))


def test_iter_fields_and_uint32_truncation() -> None:
    msg = crau.field_varint(1, 2**32 + 2) + crau.field_bytes(2, b"abc")
    f1, f2 = pw.iter_fields(msg)
    assert (f1.number, f1.as_uint32("v"), f1.as_uint64("v")) == (1, 2, 2**32 + 2)
    assert (f2.number, bytes(f2.as_bytes("d")), f2.offset) == (2, b"abc", len(msg) - 5)


# -- never anything but a PayloadError ---------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_only_payload_errors(data: bytes, trusted: list[pl.TrustedKey]) -> None:
    for chunk in (len(data) or 1, 13):
        with contextlib.suppress(PayloadError):
            verify(data, trusted, chunk)


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_random_bytes(data: bytes) -> None:
    check_only_payload_errors(data, [])


@FUZZ
@given(manifest=st.binary(max_size=300), tail=st.binary(max_size=300))
def test_fuzz_random_manifest(manifest: bytes, tail: bytes) -> None:
    check_only_payload_errors(with_manifest(manifest, tail), [])


@FUZZ
@given(
    edits=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=4),
    cut=st.one_of(st.none(), st.integers(min_value=0)),
    extra=st.binary(max_size=8),
)
def test_fuzz_mutated_payload(
    keys: Keys, valid: bytes, edits: list[tuple[int, int]], cut: int | None, extra: bytes
) -> None:
    raw = bytearray(valid)
    for pos, byte in edits:
        raw[pos % len(raw)] = byte
    if cut is not None:
        del raw[cut % len(raw) :]
    raw += extra
    check_only_payload_errors(bytes(raw), keys.trusted(keys.main))
