"""The mistakes an operator makes with the CLI get one line that says what is wrong (issue 6).

Each case runs the real CLI against a real server; each would pass through to a traceback, an
empty answer that looks true, or a silently accepted bad file without the check it names.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from nebula import crau
from nebula.lifecycle import STATUSES
from tests.cli.runner import fails, nebula, ok
from tests.cli.test_cli import AZURE, MAIN, NEW, api
from tests.factories import payload_file

# -- --server / NEBULA_URL -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "words"),
    [
        ("127.0.0.1:8000", ["needs http:// or https://", "http://127.0.0.1:8000"]),
        ("ftp://127.0.0.1:8000", ["needs http:// or https://"]),
        ("http://127.0.0.1:8000/v1/update/", ["has a path", "http://127.0.0.1:8000"]),
        ("http://127.0.0.1:8000/api", ["has a path", "/api/v1"]),
    ],
)
@pytest.mark.parametrize("via", ["--server", "NEBULA_URL"])
async def test_a_server_url_that_cannot_be_right_is_refused_before_sending(
    given: str, words: list[str], via: str
) -> None:
    if via == "--server":
        result = await nebula(["group", "list", "--server", given], NEBULA_TOKEN="nbl_x")
    else:
        result = await nebula(["group", "list"], NEBULA_URL=given, NEBULA_TOKEN="nbl_x")
    fails(result, 1, via, *words)
    assert len(result.output.strip().splitlines()) == 1, result.output


async def test_a_base_url_with_a_trailing_slash_works(server: str, admin_token: str) -> None:
    out = ok(await nebula(["channel", "list", "--server", server + "/", "--token", admin_token]))
    assert "stable" in out


# -- instance list --status ------------------------------------------------------------------------


async def test_instance_status_is_one_of_the_real_statuses(server: str, admin_token: str) -> None:
    env = {"NEBULA_URL": server, "NEBULA_TOKEN": admin_token}
    result = await nebula(["instance", "list", "--status", "bogus"], **env)
    fails(result, 2, "bogus", *STATUSES)
    help_text = ok(await nebula(["instance", "list", "--help"]))
    assert all(s in help_text for s in STATUSES)
    ok(await nebula(["instance", "list", "--status", STATUSES[0]], **env))

    # The API refuses it too, rather than answering an empty list.
    status, body = await api(server, admin_token, "GET", "/api/v1/instances?status=bogus")
    assert status == 400 and "bogus" in body["error"] and STATUSES[-1] in body["error"]
    status, body = await api(server, admin_token, "GET", f"/api/v1/instances?status={STATUSES[0]}")
    assert status == 200


# -- package add with local copies -----------------------------------------------------------------


def _add(*args: str) -> list[str]:
    return ["package", "add", "--url", "https://cdn.example/x", *args, "--arch", "amd64"]


async def test_package_add_verifies_local_copies_as_upload_does(
    server: str, admin_token: str, tmp_path: Path, signing_key: RSAPrivateKey
) -> None:
    env = {"NEBULA_URL": server, "NEBULA_TOKEN": admin_token}
    not_a_payload = tmp_path / "README.md"
    not_a_payload.write_text("# Nebula\n")
    foreign = payload_file(tmp_path / "foreign", MAIN, crau.make_rsa_key(), size=4096)
    delta = payload_file(tmp_path / "delta", MAIN, signing_key, size=4096, delta=True)
    good = payload_file(tmp_path / "good", MAIN, signing_key, size=4096)
    unsigned_ext = payload_file(tmp_path / "ext", AZURE, None, size=4096)

    # Refused on the operator's machine: not CrAU at all, or no signature.
    fails(await nebula(_add(str(not_a_payload), "--version", NEW), **env), 1, "README.md")
    fails(
        await nebula(_add(str(good), "--extension", str(unsigned_ext), "--version", NEW), **env),
        1,
        AZURE,
        "signature",
    )
    # Refused by the server, which alone knows the trusted keys and the package's kind.
    fails(
        await nebula(_add(str(foreign), "--version", NEW), **env),
        1,
        "422",
        MAIN,
        "does not verify against any trusted key",
    )
    fails(await nebula(_add(str(delta), "--version", NEW), **env), 1, "delta", "--from-version")
    status, body = await api(server, admin_token, "GET", "/api/v1/packages")
    assert status == 200 and body["packages"] == []

    package = json.loads(ok(await nebula(_add(str(good), "--version", NEW, "--json"), **env)))
    assert package["files"][0]["signer"], package  # the key it verified against


async def test_forged_signature_facts_are_refused_by_the_api(
    server: str, admin_token: str, tmp_path: Path, signing_key: RSAPrivateKey
) -> None:
    data = payload_file(tmp_path, MAIN, signing_key, size=4096).read_bytes()
    file = {
        "name": MAIN,
        "size": len(data),
        "sha1": hashlib.sha1(data).hexdigest(),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    # A real signature by the trusted key, but over other bytes than the digest claimed.
    other = payload_file(tmp_path / "other", MAIN, signing_key, size=4096)
    from nebula.payload import read_facts

    facts, other_facts = read_facts(tmp_path / MAIN), read_facts(other)
    forged = {
        "signed_size": facts.signed_size,
        "signed_sha256": facts.signed_sha256.hex(),
        "signature": base64.b64encode(other_facts.signature).decode(),
        "delta": False,
    }
    body = {"version": NEW, "arch": "amd64", "base_url": "https://cdn.example/x"}
    for crau_facts, words in (
        (forged, ["over different content"]),
        ({**forged, "signature": "not base64!"}, ["signature (base64)"]),
        ({**forged, "signed_sha256": "ab"}, ["64 hex digits"]),
        ("yes", ["crau needs"]),
    ):
        status, answer = await api(
            server,
            admin_token,
            "POST",
            "/api/v1/packages",
            json={**body, "files": [{**file, "crau": crau_facts}]},
        )
        assert status in (400, 422), (crau_facts, answer)
        assert all(w in answer["error"] for w in words), answer
    status, listed = await api(server, admin_token, "GET", "/api/v1/packages")
    assert listed["packages"] == []


# -- sample-payload --------------------------------------------------------------------------------


async def test_sample_payload_keeps_an_existing_key(tmp_path: Path) -> None:
    out = tmp_path / "sample"
    ok(await nebula(["sample-payload", "--out", str(out), "--size", "1024"]))
    private = out / "sample-key.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    key, payload = private.read_bytes(), (out / MAIN).read_bytes()

    result = await nebula(["sample-payload", "--out", str(out), "--size", "1024"])
    fails(result, 1, "sample-key.pem exists", "--force")
    assert private.read_bytes() == key and (out / MAIN).read_bytes() == payload

    os.chmod(private, 0o644)
    ok(await nebula(["sample-payload", "--out", str(out), "--size", "1024", "--force"]))
    assert private.read_bytes() != key
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_sample_output_is_kept_out_of_git() -> None:
    ignored = (Path(__file__).parents[2] / ".gitignore").read_text().split()
    assert "/sample/" in ignored
