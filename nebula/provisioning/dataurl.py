"""File contents as `data:` URLs that Ignition decodes to exactly the bytes meant.

Ignition decodes percent-escapes only: a `+` stays a `+`, an unescaped `#` ends the data (it
starts a fragment), and the URL must be ASCII. So every byte outside the unreserved marks that
RFC 2396 leaves alone (A-Z a-z 0-9 - _ . ! ~ * ' ( )) is written as %XX, including every
byte of a UTF-8 character.

Pure: imports only the standard library.
"""

from __future__ import annotations

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.!~*'()")


def data_url(contents: str | bytes) -> str:
    """`data:,` and the percent-encoded bytes (text is encoded as UTF-8)."""
    raw = contents.encode("utf-8") if isinstance(contents, str) else contents
    return "data:," + "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in raw)
