"""update_engine's error codes in words, for people reading a host's events and state.

A failure event carries `errorcode`: a base code in the low 28 bits and flags in the high
four (contract §3; Flatcar's update_engine, `ActionExitCode` in action_processor.h). Codes
2000 + N stand for HTTP status N on the update check. Pure: imports nothing of Nebula.
"""

from __future__ import annotations

from typing import Any

BASE_MASK = 0x0FFFFFFF
HTTP_BASE = 2000

# The base codes, each as an operator would want it said.
_BASE: dict[int, str] = {
    0: "success",
    1: "generic error",
    2: "update check request failed",
    3: "update check answer could not be handled",
    4: "filesystem copy failed",
    5: "post-install failed (often a missing extension payload)",
    6: "set bootable flag failed",
    7: "cannot open the install partition",
    8: "cannot open the kernel partition",
    9: "download failed (transfer error)",
    10: "payload hash mismatch",
    11: "payload size mismatch",
    12: "payload verification failed",
    13: "new partition info invalid",
    14: "writing the download failed",
    15: "new root filesystem verification failed",
    16: "new kernel verification failed",
    17: "a signed delta payload was expected",
    18: "payload signature verification failed (public key)",
    19: "post-install: booted from firmware B",
    20: "download state could not be initialized",
    21: "payload metadata magic invalid",
    22: "payload manifest has no signature",
    23: "payload manifest does not parse",
    24: "payload metadata signature error",
    25: "payload metadata signature verification failed",
    26: "payload metadata signature mismatch",
    27: "payload operation hash verification failed",
    28: "payload operation failed",
    29: "payload operation hash mismatch",
    30: "update check answer was empty",
    31: "update check answer is not XML",
    32: "payload metadata size invalid",
    33: "payload metadata signature invalid",
    34: "update check answer invalid",
    35: "update ignored per policy",
    36: "update deferred per policy",
    37: "HTTP error on the update check",
    38: "payload operation hash missing",
    39: "payload metadata signature missing",
    40: "update deferred for backoff",
    41: "post-install powerwash failed",
    42: "new PCR policy verification failed",
    43: "new PCR policy HTTP error",
    44: "rolled back (the new version did not boot)",
    100: "download incomplete",
}

# The flags update_engine ORs into every code it reports.
FLAGS: tuple[tuple[int, str], ...] = (
    (1 << 28, "non-official update server"),
    (1 << 29, "test or developer image"),
    (1 << 30, "resumed download"),
    (1 << 31, "developer boot mode"),
)


def base_code(code: int) -> int:
    return code & BASE_MASK


def describe_base(base: int) -> str:
    """What a base code means, in words; unknown ones say so with their number."""
    if base in _BASE:
        return _BASE[base]
    if HTTP_BASE <= base < HTTP_BASE + 1000:
        return f"HTTP status {base - HTTP_BASE} on the update check"
    return f"unknown error {base}"


def describe(code: int | None) -> dict[str, Any] | None:
    """A code as sent, in words: {code, base, text, flags}; None without a code."""
    if code is None:
        return None
    code &= 0xFFFFFFFF
    base = base_code(code)
    return {
        "code": code,
        "base": base,
        "text": describe_base(base),
        "flags": [name for bit, name in FLAGS if code & bit],
    }


_EVENTS = {
    (13, 1): "download started",
    (14, 1): "download finished",
    (3, 1): "update installed",
    (3, 2): "checked in after booting",
}
_TYPES = {3: "update", 13: "download", 14: "download"}


def describe_event(event_type: int, result: int, previous_version: str | None = None) -> str:
    """An Omaha event (type/result) in words."""
    if result == 0:
        return f"{_TYPES.get(event_type, f'event {event_type}')} failed"
    if (event_type, result) == (3, 2) and previous_version:
        if previous_version == "0.0.0.0":
            return "first check after install"
        return f"rebooted into the update from {previous_version}"
    return _EVENTS.get((event_type, result), f"event {event_type}/{result}")
