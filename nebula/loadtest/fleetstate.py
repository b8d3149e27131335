"""What `nebula simulate` knows about its fleet: each host's state, the request counters, the
request latencies, the most hosts seen updating at once, and the lines printed from them
(progress and summary) or the JSON document of `--json`.

Only the simulator's own observations live here: it never asks the server what it recorded.
Pure: the standard library only, no clock (elapsed times and latencies are passed in), no I/O.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["STATES", "Fleet", "HostView", "Latency", "Report"]

STATES = ("idle", "updating", "installed", "updated", "failed")
"""A host's state as the progress lines count it: `idle` polls (and checks) and has not updated
yet, `updating` took an offer and is downloading, `installed` sent 3/1 and waits for its
reboot, `updated` rebooted into an offered version and polls again, `failed` reported a failure
(3/0) for its last attempt and polls again."""

# From an offer to the reboot the host is in the middle of an update, as the server counts it
# for a concurrency limit (grant to completion).
_IN_FLIGHT = frozenset({"updating", "installed"})

# How many distinct problems with answers are kept for the summary, so that one broken server
# cannot grow the report without bound.
_PROBLEMS_KEPT = 5

# Latency buckets grow by 2% from 1 µs: a quantile is known to within 1%, in a few hundred
# buckets whatever the number of requests.
_GROWTH = 1.02
_LOG_GROWTH = math.log(_GROWTH)


@dataclass(slots=True)
class Latency:
    """Request latencies in a bounded log-scale histogram (a run may send millions)."""

    buckets: Counter[int] = field(default_factory=Counter)
    count: int = 0

    def record(self, seconds: float) -> None:
        micros = max(seconds * 1e6, 1.0)
        self.buckets[int(math.log(micros) / _LOG_GROWTH)] += 1
        self.count += 1

    def quantile(self, q: float) -> float | None:
        """The latency (seconds) below which a fraction `q` of the requests took, or None when
        nothing was recorded; the middle of the bucket it falls in."""
        if not self.count:
            return None
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index in sorted(self.buckets):  # not empty: count > 0
            seen += self.buckets[index]
            if seen >= rank:
                break
        return float(_GROWTH ** (index + 0.5) / 1e6)


@dataclass(slots=True)
class HostView:
    """One host as the fleet sees it."""

    machine_id: str
    version: str
    state: str = "idle"
    updates: int = 0
    failures: int = 0
    # True once the server answered the first check after the host's last reboot (the check
    # that names the old version and lets the server record the update as complete).
    confirmed: bool = True


@dataclass(slots=True)
class Fleet:
    """Every host's state and the counters of a run, changed only through its methods (or
    plain increments of the counters) so that the in-flight maximum is taken at every move."""

    hosts: list[HostView]
    checks: int = 0
    offers: int = 0
    noupdates: int = 0
    completions: int = 0
    events: int = 0
    pings: int = 0
    downloads: int = 0
    resumes: int = 0
    bytes_downloaded: int = 0
    unreachable: int = 0
    invalid_answers: int = 0
    bad_acks: int = 0
    payload_errors: int = 0
    injected_failures: int = 0
    http_errors: Counter[int] = field(default_factory=Counter)
    error_codes: Counter[int] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    latency: Latency = field(default_factory=Latency)
    in_flight: int = 0
    max_in_flight: int = 0
    # Bumped whenever the rollout moves (an offer, a completion, a failure): the simulator's
    # "stalled" test counts the noupdate answers hosts got since the last move.
    changes: int = 0

    def move(self, host: HostView, state: str) -> None:
        was = host.state in _IN_FLIGHT
        now = state in _IN_FLIGHT
        host.state = state
        self.in_flight += int(now) - int(was)
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def problem(self, text: str) -> None:
        """An answer the client could not use (error 34), or a payload it refused."""
        if text not in self.problems and len(self.problems) < _PROBLEMS_KEPT:
            self.problems.append(text)

    @property
    def protocol_errors(self) -> int:
        """Requests or downloads that went wrong on the server's side: no answer, an HTTP
        error, an answer the client cannot use, an event or ping not acknowledged, a payload
        that is not what was offered. Failures the run was asked to inject are not among them."""
        return (
            self.unreachable
            + sum(self.http_errors.values())
            + self.invalid_answers
            + self.bad_acks
            + self.payload_errors
        )

    def states(self) -> Counter[str]:
        return Counter(h.state for h in self.hosts)

    def versions(self) -> Counter[str]:
        return Counter(h.version for h in self.hosts)

    def reached(self, version: str) -> int:
        """Hosts running `version` whose server has heard so (their first check after the
        reboot into it was answered)."""
        return sum(1 for h in self.hosts if h.version == version and h.confirmed)

    def progress_line(self, elapsed: float) -> str:
        states = self.states()
        return (
            f"[{elapsed:6.1f}s] "
            + " ".join(f"{s} {states[s]}" for s in STATES)
            + f" | updating at once {self.in_flight} (max {self.max_in_flight})"
            + f" | grants {self.offers} completions {self.completions}"
            + f" | versions {_versions(self.versions())}"
        )

    def report(self, elapsed: float, expect_version: str | None, expected_failures: int) -> Report:
        return Report(
            elapsed=elapsed,
            hosts=len(self.hosts),
            states=self.states(),
            versions=self.versions(),
            expect_version=expect_version,
            reached=self.reached(expect_version) if expect_version is not None else None,
            expected_failures=expected_failures,
            answered=self.offers + self.noupdates,
            latency_p50=self.latency.quantile(0.50),
            latency_p99=self.latency.quantile(0.99),
            fleet=self,
        )


@dataclass(frozen=True, slots=True)
class Report:
    """The end of a run: what the summary prints and the exit status follows."""

    elapsed: float
    hosts: int
    states: Counter[str]
    versions: Counter[str]
    expect_version: str | None
    reached: int | None
    expected_failures: int  # hosts made to fail (--fail-rate): they never reach the version
    answered: int
    latency_p50: float | None
    latency_p99: float | None
    fleet: Fleet

    @property
    def problems(self) -> list[str]:
        """Why the run failed (the exit status is not 0), empty when it did not."""
        f = self.fleet
        why = []
        if self.answered == 0:
            # A wrong URL must not pass as a quiet run.
            why.append("no update check was answered: is --url the server's Omaha URL?")
        if f.protocol_errors:
            why.append(f"{f.protocol_errors} protocol errors")
        want = self.hosts - self.expected_failures
        if self.reached is not None and self.reached < want:
            why.append(f"{self.reached} of the {want} hosts expected reached {self.expect_version}")
        return why

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> list[str]:
        f = self.fleet
        lines = [f"simulated {self.hosts} hosts for {self.elapsed:.1f}s"]
        if self.expect_version is not None:
            lines.append(f"on {self.expect_version}: {self.reached} of {self.hosts} hosts")
        lines += [
            "hosts: " + ", ".join(f"{s} {self.states[s]}" for s in STATES),
            f"versions: {_versions(self.versions)}",
            f"grants {f.offers}, completions {f.completions},"
            f" most hosts updating at once {f.max_in_flight}",
            f"update checks {f.checks} (ok {f.offers}, noupdate {f.noupdates}), events {f.events},"
            f" pings {f.pings}, downloads {f.downloads} ({f.bytes_downloaded} bytes,"
            f" {f.resumes} resumed)",
            f"latency of {f.latency.count} Omaha requests: p50 {_ms(self.latency_p50)},"
            f" p99 {_ms(self.latency_p99)}",
            f"reported error codes (base): {_counts(f.error_codes) or 'none'}"
            + (f" ({f.injected_failures} injected by --fail-rate)" if f.injected_failures else ""),
            f"protocol errors {f.protocol_errors}: unreachable {f.unreachable}, HTTP "
            + (_counts(f.http_errors) or "none")
            + f", invalid answers {f.invalid_answers}, unacknowledged events or pings"
            f" {f.bad_acks}, bad payloads {f.payload_errors}",
        ]
        lines += [f"problem: {p}" for p in f.problems]
        lines += [f"FAILED: {why}" for why in self.problems]
        return lines

    def to_json(self) -> dict[str, Any]:
        """The report as `--json` prints it: counts keyed by strings, latencies in seconds."""
        f = self.fleet
        return {
            "ok": self.ok,
            "failures": self.problems,
            "elapsed": round(self.elapsed, 3),
            "hosts": self.hosts,
            "states": {s: self.states[s] for s in STATES},
            "versions": dict(sorted(self.versions.items())),
            "expect_version": self.expect_version,
            "reached": self.reached,
            "grants": f.offers,
            "completions": f.completions,
            "max_in_flight": f.max_in_flight,
            "requests": {
                "checks": f.checks,
                "noupdate": f.noupdates,
                "events": f.events,
                "pings": f.pings,
            },
            "downloads": {
                "count": f.downloads,
                "bytes": f.bytes_downloaded,
                "resumed": f.resumes,
            },
            "latency": {"count": f.latency.count, "p50": self.latency_p50, "p99": self.latency_p99},
            "error_codes": {str(k): n for k, n in sorted(f.error_codes.items())},
            "injected_failures": f.injected_failures,
            "protocol_errors": {
                "total": f.protocol_errors,
                "unreachable": f.unreachable,
                "http": {str(k): n for k, n in sorted(f.http_errors.items())},
                "invalid_answers": f.invalid_answers,
                "unacknowledged": f.bad_acks,
                "bad_payloads": f.payload_errors,
            },
            "problems": list(f.problems),
        }


def _versions(versions: Counter[str]) -> str:
    return ", ".join(f"{v}: {n}" for v, n in sorted(versions.items())) or "none"


def _counts(counts: Counter[int]) -> str:
    return ", ".join(f"{k}: {n}" for k, n in sorted(counts.items()))


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"
