"""What the bench sends: the phases, their request bodies and the answer each must get.

A phase is data, not code, so that the two load generators (wrk's Lua in nebula.loadtest.wrk,
the Python one in nebula.loadtest.pygen) send the same bytes: one to three body templates (a
request as update_engine 0.4.10 builds it, contract §2, with the machine id and boot id left
open), a machine-id prefix, the size of the pool of hosts the ids cycle through (none: a new
host every request) and the fragment every answer must contain.

Request number `k` of generator thread `tid` (of `threads`) is addressed by `request_of`, and the
Lua script implements the very same arithmetic:

    one template:    host n = k
    several (steps): blocks of steps*window requests; inside a block, `window` hosts get step 0,
                     then the same hosts step 1, and so on, so a host's events go out in order
                     (a request is sent only after all but connections-1 before it finished,
                     and window >= connections)
    machine id:      prefix (8 hex) + (n*threads + tid, modulo the pool size if any) as 24 hex

Pure: imports only the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass

APP_ID = "{e96281a6-d1af-4bde-9a0a-97b76e56dc57}"
OLD, TARGET = "3815.2.0", "4152.2.3"
PATH = "/v1/update/"

_CHECK = (
    '        <ping active="1"></ping>\n'
    "        <updatecheck></updatecheck>\n"
    '        <event eventtype="3" eventresult="2" previousversion=""></event>\n'
)
_PING = '        <ping active="1"></ping>\n'


def _event(event_type: int, result: int) -> str:
    return f'        <event eventtype="{event_type}" eventresult="{result}"></event>\n'


# Placeholders in a template; a real body never contains a NUL.
MID, BOOT = "\0MID\0", "\0BOOT\0"


def template(version: str, inner: str, track: str = "stable") -> str:
    """A request body with the machine id and boot id left open; filled in, byte for byte what
    update_engine 0.4.10 sends (tests/data/omaha/update_check.xml is one)."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<request protocol="3.0" version="update_engine-0.4.10" '
        'updaterversion="update_engine-0.4.10" installsource="scheduler" ismachine="1">\n'
        f'    <os version="Chateau" platform="CoreOS" sp="{version}_x86_64"></os>\n'
        f'    <app appid="{APP_ID}" version="{version}" track="{track}" bootid="{BOOT}" '
        f'oem="qemu" oemversion="" alephversion="3510.2.1" machineid="{MID}" machinealias="" '
        'lang="en-US" board="amd64-usr" hardware_class="" delta_okay="false" >\n'
        f"{inner}"
        "    </app>\n</request>\n"
    )


def boot_id(machine_id: str) -> str:
    """A braced UUID derived from the machine id: stable per host, as within one boot."""
    return f"{{{machine_id[:8]}-0000-4000-8000-{machine_id[-12:]}}}"


def fill(tpl: str, machine_id: str) -> bytes:
    return tpl.replace(BOOT, boot_id(machine_id)).replace(MID, machine_id).encode()


def machine_id(prefix: str, number: int) -> str:
    return f"{prefix}{number:024x}"


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    title: str
    templates: tuple[str, ...]  # one per step, sent in order to each host
    prefix: str  # 8 hex digits: the first half of every machine id of this phase
    expect: str  # every answer must contain it (and be a 200)
    pool: int | None = None  # cycle through this many hosts; None: a new host every request


@dataclass(frozen=True, slots=True)
class Pools:
    """The hosts the bench writes into the database before it starts the phases."""

    known: str  # prefix of current hosts (on TARGET, idle): the steady state
    known_size: int
    granted: str  # prefix of hosts granted TARGET while on OLD: events and pings come from them
    granted_size: int
    # Idle hosts on OLD that the grant-known phases grant TARGET, one pool per group (stable,
    # and LIMITED_TRACK with its limits); empty when neither phase runs.
    old: str
    old_limited: str
    old_size: int = 0


PHASE_NAMES = (
    "steady",
    "first-seen",
    "grant",
    "grant-limited",
    "grant-known",
    "grant-known-limited",
    "events",
    "ping",
)
# The phases that grant hosts of the pools on OLD: each host at most once (their phases have no
# pool to cycle through, so a host past the pool's end is a new one, which the bench counts).
KNOWN_GRANT_PHASES = ("grant-known", "grant-known-limited")
# The group of the grant-limited phase: rate and concurrency limits it never reaches, so that
# every check is a grant decided on counts under the group's exclusive lock.
LIMITED_TRACK = "beta"
LIMITED_POLICY = {"max_updates_per_period": 1_000_000, "period": "1h", "max_concurrent": 1_000_000}
NOUPDATE = '<updatecheck status="noupdate"'
GRANTED = '<updatecheck status="ok"'


def pools(run_id: str, hosts: int, connections: int, old: int = 0) -> Pools:
    # Hosts take three requests each in the events phase; a pool smaller than the requests in
    # flight would send one host's events at once. At least that many, then as many as known.
    return Pools(
        f"{run_id}01",
        hosts,
        f"{run_id}02",
        max(hosts, 4 * connections),
        f"{run_id}06",
        f"{run_id}07",
        old,
    )


def old_pool(phase: str, pools: Pools) -> str:
    """The prefix of the pool on OLD that a KNOWN_GRANT_PHASES phase grants."""
    return pools.old_limited if phase == "grant-known-limited" else pools.old


def phases(run_id: str, pools: Pools) -> dict[str, Phase]:
    """Every phase of a run; `run_id` is 6 hex digits, so no two runs share a host."""
    events = tuple(template(OLD, _event(t, 1)) for t in (13, 14, 3))
    all_phases = (
        Phase(
            "steady",
            "check, known current host",
            (template(TARGET, _CHECK),),
            pools.known,
            NOUPDATE,
            pools.known_size,
        ),
        Phase(
            "first-seen",
            "check, first-seen current host",
            (template(TARGET, _CHECK),),
            f"{run_id}03",
            NOUPDATE,
        ),
        Phase(
            "grant",
            "check, new host on old -> grant",
            (template(OLD, _CHECK),),
            f"{run_id}04",
            GRANTED,
        ),
        Phase(
            "grant-limited",
            "check, new host -> counted grant",
            (template(OLD, _CHECK, LIMITED_TRACK),),
            f"{run_id}05",
            GRANTED,
        ),
        Phase(
            "grant-known",
            "check, known host on old -> grant",
            (template(OLD, _CHECK),),
            pools.old,
            GRANTED,
        ),
        Phase(
            "grant-known-limited",
            "check, known host -> counted grant",
            (template(OLD, _CHECK, LIMITED_TRACK),),
            pools.old_limited,
            GRANTED,
        ),
        Phase(
            "events",
            "events 13/1 14/1 3/1, granted host",
            events,
            pools.granted,
            '<event status="ok"',
            pools.granted_size,
        ),
        Phase(
            "ping",
            "ping only, granted host",
            (template(OLD, _PING),),
            pools.granted,
            '<ping status="ok"',
            pools.granted_size,
        ),
    )
    return {p.name: p for p in all_phases}


def request_of(phase: Phase, tid: int, threads: int, window: int, k: int) -> tuple[int, int]:
    """(step, host number) of request `k` of thread `tid`; see the module docstring."""
    steps = len(phase.templates)
    if steps == 1:
        step, n = 0, k
    else:
        step = (k // window) % steps
        n = (k // (steps * window)) * window + k % window
    number = n * threads + tid
    if phase.pool is not None:
        number %= phase.pool
    return step, number


def body_of(phase: Phase, tid: int, threads: int, window: int, k: int) -> bytes:
    step, number = request_of(phase, tid, threads, window, k)
    return fill(phase.templates[step], machine_id(phase.prefix, number))


@dataclass(frozen=True, slots=True)
class Measurement:
    """What one generator run against one server measured."""

    requests: int  # answered, good or bad
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int  # non-200, unexpected answer, timeout, connection error

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0
