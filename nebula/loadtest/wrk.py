"""Load one phase onto a server with wrk (Debian's `wrk`), in wrk's own process.

A Lua script is written per phase: `request()` builds each body from the phase's templates
with the machine-id arithmetic of nebula.loadtest.workload (so wrk and the Python generator send
the same bytes), `response()` checks every answer (a 200 holding the phase's expected
fragment), and `done()` prints one line the bench parses: requests, duration, p50 and p99 from
wrk's latency histogram, and every kind of error. wrk runs for a fixed duration with a fixed
number of connections and a per-request timeout.

Imports nebula.loadtest.workload only.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from nebula.loadtest.workload import BOOT, MID, PATH, Measurement, Phase

_RESULT = re.compile(r"^NEBULA_WRK (.*)$", re.M)


def available() -> str | None:
    """The path of wrk, or None where it is not installed."""
    return shutil.which("wrk")


def version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    first = (out.stdout or out.stderr).splitlines()
    return first[0].split(" Copyright")[0].strip() if first else "wrk"


def lua_string(text: str) -> str:
    """A Lua string literal of `text` (decimal escapes for anything but printable ASCII)."""
    out = []
    for ch in text.encode():
        if ch in (0x22, 0x5C) or not 0x20 <= ch < 0x7F:
            out.append(f"\\{ch:03d}")
        else:
            out.append(chr(ch))
    return '"' + "".join(out) + '"'


def _split(tpl: str) -> tuple[str, str, str]:
    head, rest = tpl.split(BOOT)
    middle, tail = rest.split(MID)
    return head, middle, tail


def script(phase: Phase, threads: int, window: int) -> str:
    """The Lua script that sends `phase`; the arithmetic mirrors workload.request_of."""
    parts = ",\n  ".join(
        "{" + ", ".join(lua_string(p) for p in _split(t)) + "}" for t in phase.templates
    )
    return f"""-- Written by nebula bench for the phase {phase.name}; see nebula/loadtest/wrk.py.
local prefix = {lua_string(phase.prefix)}
local pool = {phase.pool or 0}
local window = {window}
local nthreads = {threads}
local expect = {lua_string(phase.expect)}
local path = {lua_string(PATH)}
local templates = {{
  {parts}
}}
local nsteps = #templates
local threads = {{}}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  k = 0
  bad = 0
  -- wrk calls request() once on the first thread before it starts, to check the script: that
  -- call must not use up a request, or that thread's first host would skip its first step.
  verified = tid ~= 0
end

function request()
  local advance = 1
  if not verified then
    verified = true
    advance = 0
  end
  local step, n
  if nsteps == 1 then
    step, n = 0, k
  else
    step = math.floor(k / window) % nsteps
    n = math.floor(k / (nsteps * window)) * window + k % window
  end
  local number = n * nthreads + tid
  if pool > 0 then number = number % pool end
  local mid = prefix .. string.format("%024x", number)
  local boot = "{{" .. mid:sub(1, 8) .. "-0000-4000-8000-" .. mid:sub(-12) .. "}}"
  local t = templates[step + 1]
  k = k + advance
  local body = t[1] .. boot .. t[2] .. mid .. t[3]
  return wrk.format("POST", path, {{["Content-Type"] = "text/xml"}}, body)
end

function response(status, headers, body)
  if status ~= 200 or not string.find(body, expect, 1, true) then
    bad = bad + 1
  end
end

function done(summary, latency, requests)
  local unexpected = 0
  for _, t in ipairs(threads) do unexpected = unexpected + t:get("bad") end
  local e = summary.errors
  io.write(string.format(
    "NEBULA_WRK requests=%d duration_us=%d p50_us=%d p99_us=%d unexpected=%d " ..
    "connect=%d read=%d write=%d timeout=%d status=%d\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    unexpected, e.connect, e.read, e.write, e.timeout, e.status))
end
"""


def parse(output: str) -> Measurement:
    """The Measurement of the line done() printed; ValueError when there is none."""
    match = _RESULT.search(output)
    if match is None:
        raise ValueError(f"no NEBULA_WRK line in wrk's output:\n{output[-2000:]}")
    fields = dict(item.split("=", 1) for item in match.group(1).split())
    values = {k: int(v) for k, v in fields.items()}
    # Non-200 answers reach response() and are counted there as unexpected; status would count
    # them twice. Timeouts and socket errors never reach it.
    errors = sum(values[k] for k in ("unexpected", "connect", "read", "write", "timeout"))
    return Measurement(
        requests=values["requests"],
        seconds=values["duration_us"] / 1e6,
        p50_ms=values["p50_us"] / 1000,
        p99_ms=values["p99_us"] / 1000,
        errors=errors,
    )


def run(
    binary: str,
    url: str,
    phase: Phase,
    *,
    connections: int,
    threads: int,
    duration: int,
    timeout: int,
    work: Path,
) -> Measurement:
    """Run wrk for `duration` seconds against `url` (the server's base) and measure."""
    lua = work / f"wrk-{phase.name}.lua"
    lua.write_text(script(phase, threads, window=connections))
    cmd = [
        binary,
        f"--threads={threads}",
        f"--connections={connections}",
        f"--duration={duration}s",
        f"--timeout={timeout}s",
        f"--script={lua}",
        url + PATH,
    ]
    # The hard cap: wrk stops itself after `duration`; a wedged one is killed well after.
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + timeout + 30)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
    return parse(out.stdout)
