"""Tests build payloads with nebula.crau (the writer); this name is kept for the test modules."""

from nebula.crau import *  # noqa: F403
from nebula.crau import (  # noqa: F401
    BLOCK_SIZE,
    DEFAULT_DATA,
    build_payload,
    field_bytes,
    field_varint,
    header,
    install_info,
    make_rsa_key,
    manifest,
    public_pem,
    replace_operation,
    sign_digest,
    signatures_blob,
    varint,
    write_payload,
)
