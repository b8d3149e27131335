"""nebula.provisioning: the Butane and Ignition host configs, without a server.

Every Ignition output is validated against Ignition's own v3.4 JSON schema
(tests/data/ignition/v3_4.schema.json, coreos/ignition's config/v3_4/schema/ignition.json as
published), data URLs are decoded the way Ignition decodes them, and the Butane output is read
back with a YAML parser and translated as `butane` would, which must give the same Ignition.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from nebula.errors import InvalidInputError
from nebula.provisioning import HostSpec, build_spec, render_butane, render_ignition
from nebula.provisioning.dataurl import data_url

SCHEMA = json.loads(
    (Path(__file__).parent.parent / "data" / "ignition" / "v3_4.schema.json").read_text()
)
SERVER = "https://updates.example.com"
SHA = "ab" * 32
EVERYTHING: dict[str, Any] = dict(
    group="stable",
    server=SERVER,
    alias_from_hostname=True,
    reboot_strategy="etcd-lock",
    reboot_window="Thu 04:00",
    reboot_window_length="1h30m",
    extensions=["podman", "zfs", "-docker"],
    sysexts=["kubernetes=v1.31.1", f"docker-compose=2.34.0:{SHA.upper()}"],
    release_server=True,
)


def ignition_decode(url: str) -> bytes:
    """A data URL's bytes as Ignition reads them: percent-escapes only, '+' stays '+', and the
    URL must be ASCII with no unescaped '#' (which would cut the data)."""
    assert url.isascii() and "#" not in url
    head, sep, data = url.partition(",")
    assert sep and head == "data:"
    out = bytearray()
    i = 0
    while i < len(data):
        if data[i] == "%":
            out.append(int(data[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(ord(data[i]))
            i += 1
    return bytes(out)


def ignition(spec: HostSpec) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(render_ignition(spec))
    jsonschema.Draft4Validator(SCHEMA).validate(config)
    return config


def files_of(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in config.get("storage", {}).get("files", [])}


def text_of(config: dict[str, Any], path: str) -> str:
    return ignition_decode(files_of(config)[path]["contents"]["source"]).decode()


def units_of(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {u["name"]: u for u in config.get("systemd", {}).get("units", [])}


# -- the schema --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        dict(group="stable", server=SERVER),
        EVERYTHING,
        {**EVERYTHING, "arch": "arm64", "sysext_url": "https://images.example.com/sysext/"},
        dict(group="9a2deb70-37be-4026-853f-bfdd6b347bbe", server="http://10.0.0.1:8000"),
    ],
    ids=["minimal", "every-flag", "arm64-own-image-host", "legacy-uuid-group"],
)
def test_ignition_validates_against_the_v3_4_schema(options: dict[str, Any]) -> None:
    config = ignition(build_spec(**options))
    assert config["ignition"] == {"version": "3.4.0"}


def test_the_schema_check_can_fail() -> None:
    """The shipped schema is the real one: an octal string mode or a file without a path, as a
    wrong renderer would write them, are refused."""
    validator = jsonschema.Draft4Validator(SCHEMA)
    config = ignition(build_spec(group="stable", server=SERVER))
    bad_mode = json.loads(json.dumps(config))
    bad_mode["storage"]["files"][0]["mode"] = "0644"
    no_path = json.loads(json.dumps(config))
    del no_path["storage"]["files"][0]["path"]
    no_version = {"ignition": {}}
    for bad in (bad_mode, no_path, no_version):
        assert not validator.is_valid(bad)


# -- modes and data URLs -------------------------------------------------------------------------


def test_modes_are_decimal_in_ignition_and_octal_in_butane() -> None:
    spec = build_spec(**EVERYTHING)
    config = ignition(spec)
    modes = {f["mode"] for f in files_of(config).values()}
    assert modes == {420}
    assert all(type(f["mode"]) is int for f in files_of(config).values())
    assert '"mode": 420' in render_ignition(spec)
    butane = render_butane(spec)
    assert set(re.findall(r"mode: (\S+)", butane)) == {"0644"}
    assert {f["mode"] for f in yaml.safe_load(butane)["storage"]["files"]} == {420}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a b", "data:,a%20b"),
        ("100%", "data:,100%25"),
        ("#not a fragment", "data:,%23not%20a%20fragment"),
        ("x\ny\n", "data:,x%0Ay%0A"),
        ("a+b", "data:,a%2Bb"),
        ("é", "data:,%C3%A9"),
        ("€", "data:,%E2%82%AC"),
        ("k=v&q?/:", "data:,k%3Dv%26q%3F%2F%3A"),
        ("safe-_.!~*'()AZaz09", "data:,safe-_.!~*'()AZaz09"),
        ("", "data:,"),
    ],
)
def test_data_urls_follow_ignitions_percent_encoding(text: str, expected: str) -> None:
    url = data_url(text)
    assert url == expected
    assert ignition_decode(url) == text.encode("utf-8")


def test_every_byte_survives_a_data_url() -> None:
    everything = bytes(range(256))
    url = data_url(everything)
    assert re.fullmatch(r"data:,(?:[A-Za-z0-9\-_.!~*'()]|%[0-9A-F]{2})*", url)
    assert ignition_decode(url) == everything


def test_inline_contents_in_the_config_are_percent_encoded() -> None:
    """The update.conf of a reboot window holds a space, quotes, '=' and ':' (all escaped)."""
    config = ignition(build_spec(**EVERYTHING))
    for node in files_of(config).values():
        source = node["contents"]["source"]
        if source.startswith("data:"):
            assert re.fullmatch(r"data:,(?:[A-Za-z0-9\-_.!~*'()]|%[0-9A-F]{2})*", source)
    assert 'LOCKSMITHD_REBOOT_WINDOW_START="Thu 04:00"\n' in text_of(
        config, "/etc/flatcar/update.conf"
    )


# -- every flag -------------------------------------------------------------------------------


def test_minimal_config_points_the_host_at_nebula() -> None:
    config = ignition(build_spec(group="beta", server="https://updates.example.com/"))
    update = files_of(config)["/etc/flatcar/update.conf"]
    assert update["overwrite"] is True  # the file exists (empty) on every host
    assert text_of(config, "/etc/flatcar/update.conf") == (
        "SERVER=https://updates.example.com/v1/update/\nGROUP=beta\n"
    )
    assert list(files_of(config)) == ["/etc/flatcar/update.conf"]
    assert "systemd" not in config and "kernelArguments" not in config


def test_server_given_as_the_omaha_url_is_not_doubled() -> None:
    config = ignition(build_spec(group="stable", server=f"{SERVER}/v1/update/"))
    assert text_of(config, "/etc/flatcar/update.conf").startswith(f"SERVER={SERVER}/v1/update/\n")


def test_every_flag() -> None:
    config = ignition(build_spec(**EVERYTHING))
    assert text_of(config, "/etc/flatcar/update.conf") == (
        f"SERVER={SERVER}/v1/update/\n"
        "GROUP=stable\n"
        "REBOOT_STRATEGY=etcd-lock\n"
        'LOCKSMITHD_REBOOT_WINDOW_START="Thu 04:00"\n'
        "LOCKSMITHD_REBOOT_WINDOW_LENGTH=1h30m\n"
    )
    files = files_of(config)
    enabled = files["/etc/flatcar/enabled-sysext.conf"]
    assert enabled["overwrite"] is True
    assert text_of(config, "/etc/flatcar/enabled-sysext.conf") == "podman\nzfs\n-docker\n"

    # The alias: a drop-in that rewrites MACHINE_ALIAS from the host name before update_engine.
    units = units_of(config)
    (alias,) = units["update-engine.service"]["dropins"]
    assert "MACHINE_ALIAS=$$(cat /proc/sys/kernel/hostname)" in alias["contents"]
    assert alias["contents"].startswith("[Service]\n")
    assert "ExecStartPre=/bin/sh -c 'sed -i" in alias["contents"]
    assert "update-engine.service" not in units_of(ignition(build_spec(group="a", server=SERVER)))

    # Sysext images: the first image (verified only where the hash is known), the link, the
    # transfer file, the timer, one drop-in each, and the noop transfer once.
    base = f"{SERVER}/v1/extensions/stable"
    k8s = files["/opt/extensions/kubernetes/kubernetes-v1.31.1-x86-64.raw"]
    assert k8s["contents"] == {"source": f"{base}/kubernetes/kubernetes-v1.31.1-x86-64.raw"}
    compose = files["/opt/extensions/docker-compose/docker-compose-2.34.0-x86-64.raw"]
    assert compose["contents"]["verification"] == {"hash": f"sha256-{SHA}"}  # lower-cased
    assert config["storage"]["links"] == [
        {
            "path": "/etc/extensions/kubernetes.raw",
            "target": "/opt/extensions/kubernetes/kubernetes-v1.31.1-x86-64.raw",
            "hard": False,
        },
        {
            "path": "/etc/extensions/docker-compose.raw",
            "target": "/opt/extensions/docker-compose/docker-compose-2.34.0-x86-64.raw",
            "hard": False,
        },
    ]
    transfer = text_of(config, "/etc/sysupdate.kubernetes.d/kubernetes.conf")
    for line in (
        "Type=url-file",
        f"Path={base}/kubernetes/",
        "MatchPattern=kubernetes-@v-%a.raw",
        "Path=/opt/extensions/kubernetes/",
        "CurrentSymlink=/etc/extensions/kubernetes.raw",
        "InstancesMax=3",
        "Verify=false",
    ):
        assert line in transfer.splitlines(), line
    assert "MatchPattern=invalid@v.raw" in text_of(config, "/etc/sysupdate.d/noop.conf")
    assert units["systemd-sysupdate.timer"] == {"name": "systemd-sysupdate.timer", "enabled": True}
    dropins = {d["name"]: d["contents"] for d in units["systemd-sysupdate.service"]["dropins"]}
    assert set(dropins) == {"kubernetes.conf", "docker-compose.conf"}
    assert (
        "ExecStartPre=/usr/lib/systemd/systemd-sysupdate -C kubernetes update"
        in dropins["kubernetes.conf"].splitlines()
    )
    # Ignition refuses a unit named twice: one sysupdate service entry holds every drop-in.
    names = [u["name"] for u in config["systemd"]["units"]]
    assert len(names) == len(set(names))

    assert config["kernelArguments"] == {
        "shouldExist": [f"flatcar.release_file_server_url={SERVER}/v1/release"]
    }


def test_arm64_and_an_own_image_host() -> None:
    config = ignition(
        build_spec(
            group="stable",
            server=SERVER,
            arch="arm64",
            sysexts=["tailscale=1.70.0"],
            sysext_url="https://images.example.com/sysext/",
        )
    )
    files = files_of(config)
    image = files["/opt/extensions/tailscale/tailscale-1.70.0-arm64.raw"]
    assert image["contents"]["source"] == (
        "https://images.example.com/sysext/tailscale/tailscale-1.70.0-arm64.raw"
    )
    assert "Path=https://images.example.com/sysext/tailscale/\n" in text_of(
        config, "/etc/sysupdate.tailscale.d/tailscale.conf"
    )


def test_without_flags_nothing_else_is_added() -> None:
    """Each part appears only with its flag (a renderer that always adds them is caught)."""
    config = ignition(build_spec(group="stable", server=SERVER, reboot_strategy="off"))
    assert text_of(config, "/etc/flatcar/update.conf").endswith("REBOOT_STRATEGY=off\n")
    assert "LOCKSMITHD" not in text_of(config, "/etc/flatcar/update.conf")
    assert set(files_of(config)) == {"/etc/flatcar/update.conf"}
    assert "links" not in config["storage"]


def test_hashes_from_a_store_fill_only_the_missing_ones() -> None:
    spec = build_spec(**EVERYTHING)
    filled = spec.with_hashes(
        {
            "kubernetes-v1.31.1-x86-64.raw": "CD" * 32,
            "docker-compose-2.34.0-x86-64.raw": "ef" * 32,  # given on the command line: kept
        }
    )
    files = files_of(ignition(filled))
    k8s = files["/opt/extensions/kubernetes/kubernetes-v1.31.1-x86-64.raw"]
    assert k8s["contents"]["verification"] == {"hash": "sha256-" + "cd" * 32}
    compose = files["/opt/extensions/docker-compose/docker-compose-2.34.0-x86-64.raw"]
    assert compose["contents"]["verification"] == {"hash": f"sha256-{SHA}"}


# -- Butane ------------------------------------------------------------------------------------


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.capitalize() for p in rest)


def butane_to_ignition(doc: Any) -> Any:
    """The translation `butane` does, for the fields these configs use: snake_case keys to
    camelCase, `inline` to a data URL, variant/version to ignition.version."""
    if isinstance(doc, dict):
        out: dict[str, Any] = {}
        for key, value in doc.items():
            if key == "inline":
                out["source"] = data_url(value)
            else:
                out[_camel(key)] = butane_to_ignition(value)
        return out
    if isinstance(doc, list):
        return [butane_to_ignition(v) for v in doc]
    return doc


@pytest.mark.parametrize(
    "options",
    [dict(group="stable", server=SERVER), EVERYTHING, {**EVERYTHING, "arch": "arm64"}],
    ids=["minimal", "every-flag", "arm64"],
)
def test_butane_says_what_the_ignition_says(options: dict[str, Any]) -> None:
    spec = build_spec(**options)
    butane = render_butane(spec)
    doc = yaml.safe_load(butane)
    assert (doc.pop("variant"), doc.pop("version")) == ("flatcar", "1.1.0")
    translated = {"ignition": {"version": "3.4.0"}, **butane_to_ignition(doc)}
    assert translated == ignition(spec)


def test_butane_notes_an_unverified_download() -> None:
    butane = render_butane(build_spec(**EVERYTHING))
    assert "# kubernetes-v1.31.1-x86-64.raw: no SHA-256 given" in butane
    assert "docker-compose-2.34.0-x86-64.raw: no SHA-256" not in butane


# -- bad options -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"group": "my group"}, ["group", "track"]),
        ({"server": "updates.example.com"}, ["http://", "https://"]),
        ({"server": "https://x.example.com/?a=1"}, ["query"]),
        ({"server": "https://x.example.com/ $(reboot)"}, ["server"]),
        ({"arch": "x86_64"}, ["amd64", "arm64"]),
        ({"reboot_strategy": "best-effort"}, ["reboot", "etcd-lock", "off"]),
        ({"reboot_window": "Thu 04:00", "reboot_window_length": None}, ["both"]),
        ({"reboot_window": "Thursday 4am", "reboot_window_length": "1h"}, ["Thu 04:00"]),
        ({"reboot_window": "Thu 04:00", "reboot_window_length": "1d"}, ["1h"]),
        ({"reboot_window": "Thu 24:00", "reboot_window_length": "1h"}, ["HH:MM"]),
        ({"reboot_window": "Thu 04:00", "reboot_window_length": "0h"}, ["positive"]),
        ({"extensions": ["flatcar-podman"]}, ["bare name", "podman"]),
        ({"extensions": ["Podman!"]}, ["lower-case"]),
        ({"sysexts": ["kubernetes"]}, ["NAME=VERSION"]),
        ({"sysexts": ["kubernetes=v1.31.1:abc"]}, ["64 hex"]),
        ({"sysexts": ["../etc=1"]}, ["name"]),
        ({"sysexts": ["kubernetes=v1 31"]}, ["version"]),
        ({"sysexts": ["kubernetes=v1", "kubernetes=v2"]}, ["twice"]),
        ({"sysext_url": "ftp://images.example.com"}, ["sysext URL"]),
    ],
)
def test_bad_options_are_refused_with_the_fix(change: dict[str, Any], words: list[str]) -> None:
    options: dict[str, Any] = {"group": "stable", "server": SERVER, **change}
    with pytest.raises(InvalidInputError) as caught:
        build_spec(**options)
    for word in words:
        assert word in str(caught.value), (word, str(caught.value))


def test_reboot_window_day_is_normalized() -> None:
    spec = build_spec(
        group="stable", server=SERVER, reboot_window="thu 04:00", reboot_window_length="1h"
    )
    assert spec.reboot_window is not None and spec.reboot_window.start == "Thu 04:00"
    daily = build_spec(
        group="stable", server=SERVER, reboot_window="23:30", reboot_window_length="45m"
    )
    assert daily.reboot_window is not None and daily.reboot_window.start == "23:30"


def test_urls_in_the_config_are_what_hosts_fetch() -> None:
    spec = build_spec(**EVERYTHING)
    for node in files_of(ignition(spec)).values():
        source = node["contents"]["source"]
        if not source.startswith("data:"):
            parts = urlsplit(source)
            assert (parts.scheme, parts.netloc) == ("https", "updates.example.com")
