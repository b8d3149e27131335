"""The catalog routes of issue 9: applications (/api/v1/apps), channel create/show/delete, group
change and delete, package show and delete, each change in the activity log with old and new
values, and a custom application served end to end to a host that sends its appid.

Each test runs against a real app on a fresh database of each backend; 401/403 for every route
come from the route walk (tests/web/test_admin_security.py).
"""

from __future__ import annotations

from typing import Any

from lxml import etree
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from nebula.store import db
from nebula.store.models import Activity, Application
from tests.factories import FLATCAR_APP_ID, Host
from tests.web.test_admin_api import auth, expect_error, external

AGENT = "io.example.agent"


async def call(client: Any, token: str, method: str, path: str, **kwargs: Any) -> Any:
    return await client.request(method, path, headers=auth(token), **kwargs)


async def ok(client: Any, token: str, method: str, path: str, status: int = 200, **kw: Any) -> Any:
    resp = await call(client, token, method, path, **kw)
    assert resp.status == status, await resp.text()
    return None if status == 204 else await resp.json()


async def activity(engine: AsyncEngine, action: str) -> list[Activity]:
    async with db.transaction(db.session_factory(engine)) as session:
        stmt = select(Activity).where(Activity.action == action).order_by(Activity.id)
        return list((await session.execute(stmt)).scalars())


async def make_app(client: Any, token: str, app_id: str = AGENT, name: str = "agent") -> Any:
    body = {"id": app_id, "name": name, "description": "the example agent"}
    return await ok(client, token, "POST", "/api/v1/apps", 201, json=body)


# -- applications --------------------------------------------------------------------------------


async def test_app_create_list_show_update(
    client: Any, admin_token: str, engine: AsyncEngine
) -> None:
    """Catches an app id kept as typed (a host's braced or upper-case appid would not match
    it), a show that cannot find an app by name or by the id as hosts send it, and changes
    logged without who made them or without the old values."""
    listed = await ok(client, admin_token, "GET", "/api/v1/apps")
    assert [a["id"] for a in listed["apps"]] == [FLATCAR_APP_ID]

    made = await make_app(client, admin_token, "{IO.Example.Agent}")
    assert made["id"] == AGENT and made["name"] == "agent"
    braced = await make_app(client, admin_token, "{8A69D345-D564-463C-AFF1-A69D9E530F96}", "chrome")
    assert braced["id"] == "8a69d345-d564-463c-aff1-a69d9e530f96"
    generated = await ok(client, admin_token, "POST", "/api/v1/apps", 201, json={"name": "gen"})
    assert len(generated["id"]) == 36 and generated["id"].count("-") == 4

    for ref in ("agent", AGENT, "IO.EXAMPLE.AGENT", "{io.example.agent}"):
        shown = await ok(client, admin_token, "GET", f"/api/v1/apps/{ref}")
        assert shown["id"] == AGENT, ref
        assert (shown["channels"], shown["groups"], shown["packages"]) == ([], [], 0)
    flatcar = await ok(client, admin_token, "GET", "/api/v1/apps/flatcar")
    assert "stable (amd64)" in flatcar["channels"] and "stable (amd64)" in flatcar["groups"]

    changed = await ok(
        client,
        admin_token,
        "PATCH",
        "/api/v1/apps/agent",
        json={"name": "agent2", "description": "renamed"},
    )
    assert (changed["id"], changed["name"], changed["description"]) == (AGENT, "agent2", "renamed")
    (entry,) = await activity(engine, "app_update")
    assert entry.actor == "ops"
    assert entry.detail["changes"] == {
        "name": ["agent", "agent2"],
        "description": ["the example agent", "renamed"],
    }
    created = await activity(engine, "app_create")
    assert [e.detail["new"]["id"] for e in created] == [AGENT, braced["id"], generated["id"]]
    # A PATCH that changes nothing logs nothing.
    await ok(client, admin_token, "PATCH", "/api/v1/apps/agent2", json={"name": "agent2"})
    assert len(await activity(engine, "app_update")) == 1


async def test_app_errors(client: Any, admin_token: str) -> None:
    """Catches ids no host could send or no column could hold (a 500 on PostgreSQL), a second
    app under an id or a name in use (also crossed: a name equal to another app's id would make
    a ref name two apps), an id that a PATCH would change under the hosts, and unknown apps."""
    await make_app(client, admin_token)
    for body, words in (
        ({"id": "has space", "name": "x"}, "app id"),
        ({"id": "x" * 37, "name": "x"}, "36"),
        ({"id": "{}", "name": "x"}, "app id"),
        ({"id": 5, "name": "x"}, "id must be a string"),
        ({"name": "bad name!"}, "app name"),
        ({}, "name is required"),
    ):
        resp = await call(client, admin_token, "POST", "/api/v1/apps", json=body)
        assert words in await expect_error(resp, 400, "InvalidInputError"), body
    for body in (
        {"id": "IO.EXAMPLE.AGENT", "name": "other"},
        {"name": "agent"},
        {"name": AGENT},
        {"id": "agent", "name": "other"},
        {"id": FLATCAR_APP_ID.upper(), "name": "other"},
    ):
        resp = await call(client, admin_token, "POST", "/api/v1/apps", json=body)
        assert "exists already" in await expect_error(resp, 409, "ConflictError"), body

    resp = await call(client, admin_token, "PATCH", "/api/v1/apps/agent", json={"id": "new.id"})
    assert "its id is what hosts send" in await expect_error(resp, 400, "InvalidInputError")
    resp = await call(client, admin_token, "PATCH", "/api/v1/apps/agent", json={"name": "flatcar"})
    await expect_error(resp, 409, "ConflictError")
    resp = await call(client, admin_token, "PATCH", "/api/v1/apps/agent", json={"description": 1})
    await expect_error(resp, 400, "InvalidInputError")
    for method in ("GET", "PATCH", "DELETE"):
        resp = await call(client, admin_token, method, "/api/v1/apps/nope", json={})
        assert "no application nope" in await expect_error(resp, 404, "NotFoundError")
    resp = await call(client, admin_token, "GET", "/api/v1/channels", params={"app": "nope"})
    await expect_error(resp, 404, "NotFoundError")


async def test_app_delete_refused_while_anything_uses_it(
    client: Any, admin_token: str, engine: AsyncEngine
) -> None:
    """Catches a delete that fails on a foreign key (a 500) or cascades away what uses the app,
    and a refusal that does not say what is in the way."""
    await make_app(client, admin_token)
    await ok(
        client, admin_token, "POST", "/api/v1/packages", 201, json=external("1.2.0", app=AGENT)
    )
    resp = await call(client, admin_token, "DELETE", "/api/v1/apps/agent")
    assert "1 packages" in await expect_error(resp, 409, "ConflictError")
    channel = {"name": "stable", "arch": "amd64", "app": AGENT, "version": "1.2.0"}
    await ok(client, admin_token, "POST", "/api/v1/channels", 201, json=channel)
    group = {"name": "agents", "arch": "amd64", "channel": "stable", "app": AGENT}
    await ok(client, admin_token, "POST", "/api/v1/groups", 201, json=group)
    resp = await call(client, admin_token, "DELETE", "/api/v1/apps/agent")
    detail = await expect_error(resp, 409, "ConflictError")
    assert "agents (amd64)" in detail and "stable (amd64)" in detail and "packages" in detail
    resp = await call(client, admin_token, "DELETE", "/api/v1/apps/flatcar")
    assert "groups" in await expect_error(resp, 409, "ConflictError")

    await ok(client, admin_token, "DELETE", f"/api/v1/groups/agents?app={AGENT}", 204)
    await ok(client, admin_token, "DELETE", "/api/v1/channels/stable?arch=amd64&app=agent", 204)
    package = (await ok(client, admin_token, "GET", "/api/v1/packages?app=agent"))["packages"][0]
    await ok(client, admin_token, "DELETE", f"/api/v1/packages/{package['id']}", 204)
    await ok(client, admin_token, "DELETE", "/api/v1/apps/agent", 204)
    await expect_error(await call(client, admin_token, "GET", "/api/v1/apps/agent"), 404)
    (entry,) = await activity(engine, "app_delete")
    assert entry.detail["old"]["id"] == AGENT and entry.group_id is None
    async with db.transaction(db.session_factory(engine)) as session:
        assert await session.get(Application, FLATCAR_APP_ID) is not None


# -- a custom application, end to end ------------------------------------------------------------


async def check(client: Any, host: Host) -> etree._Element:
    resp = await client.post("/v1/update/", data=host.check())
    assert resp.status == 200, await resp.text()
    app = etree.fromstring(await resp.read()).find("app")
    assert app is not None
    return app


async def test_a_custom_app_is_served_to_hosts_that_send_its_appid(
    client: Any, admin_token: str
) -> None:
    """Catches an appid matched as typed (braces, case), a custom app's group that the catalog
    does not load, and a Flatcar host on the same track given the custom app's package."""
    await make_app(client, admin_token, "{IO.Example.Agent}")
    await ok(
        client, admin_token, "POST", "/api/v1/packages", 201, json=external("1.2.0", app=AGENT)
    )
    channel = {"name": "stable", "arch": "amd64", "app": "agent", "version": "1.2.0"}
    made = await ok(client, admin_token, "POST", "/api/v1/channels", 201, json=channel)
    assert made["app_id"] == AGENT and made["version"] == "1.2.0"
    group = {"name": "agents", "arch": "amd64", "channel": "stable", "app": "agent"}
    made = await ok(client, admin_token, "POST", "/api/v1/groups", 201, json=group)
    assert made["app_id"] == AGENT and made["channel"] == "stable"

    host = Host("c0ffee00c0ffee00c0ffee00c0ffee00", version="1.0.0", track="agents")
    host.app_id = "{IO.EXAMPLE.AGENT}"
    app = await check(client, host)
    assert app.get("appid") == "{IO.EXAMPLE.AGENT}" and app.get("status") == "ok"
    uc = app.find("updatecheck")
    assert uc is not None and uc.get("status") == "ok"
    manifest = uc.find("manifest")
    assert manifest is not None and manifest.get("version") == "1.2.0"

    # Flatcar's hosts know no track "agents"; Flatcar's stable channel is untouched.
    flatcar = Host("c0ffee00c0ffee00c0ffee00c0ffee01", track="agents")
    uc = (await check(client, flatcar)).find("updatecheck")
    assert uc is not None and uc.get("status") != "ok"
    channels = await ok(client, admin_token, "GET", "/api/v1/channels")
    assert all(c["app_id"] == FLATCAR_APP_ID for c in channels["channels"])
    stable = [c for c in channels["channels"] if c["name"] == "stable"]
    assert all(c["version"] is None for c in stable)
    # The app's group is found by its name alone (no Flatcar group has it) and counts the host.
    shown = await ok(client, admin_token, "GET", "/api/v1/groups/agents")
    assert shown["app_id"] == AGENT and sum(shown["instances"].values()) == 1


# -- channels ------------------------------------------------------------------------------------


async def test_channel_create_show_delete(
    client: Any, admin_token: str, engine: AsyncEngine
) -> None:
    """Catches a duplicate channel, a channel pointed at a package that does not exist, one
    deleted under the groups that follow it, a show that picks an arch at random, and changes
    missing from the activity log."""
    created = await ok(
        client, admin_token, "POST", "/api/v1/channels", 201, json={"name": "edge", "arch": "arm64"}
    )
    assert (created["name"], created["arch"], created["version"]) == ("edge", "arm64", None)
    assert created["app_id"] == FLATCAR_APP_ID
    for body, status in (
        ({"name": "edge", "arch": "arm64"}, 409),
        ({"name": "edge", "arch": "amd64", "version": "9.9.9"}, 404),
        ({"name": "edge", "arch": "amd64", "version": "latest"}, 400),
        ({"name": "edge", "arch": "s390x"}, 400),
        ({"name": "bad name", "arch": "amd64"}, 400),
        ({"name": "edge"}, 400),
        ({"name": "edge", "arch": "amd64", "app": "nope"}, 404),
    ):
        resp = await call(client, admin_token, "POST", "/api/v1/channels", json=body)
        await expect_error(resp, status)

    shown = await ok(client, admin_token, "GET", "/api/v1/channels/edge")  # one arch: no --arch
    assert (shown["arch"], shown["floors"], shown["groups"]) == ("arm64", [], [])
    shown = await ok(client, admin_token, "GET", "/api/v1/channels/stable?arch=amd64")
    assert shown["groups"] == ["stable"]
    resp = await call(client, admin_token, "GET", "/api/v1/channels/stable")
    assert "--arch" in await expect_error(resp, 400, "InvalidInputError")
    await expect_error(await call(client, admin_token, "GET", "/api/v1/channels/nope"), 404)

    resp = await call(client, admin_token, "DELETE", "/api/v1/channels/stable?arch=amd64")
    assert "stable (amd64)" in await expect_error(resp, 409, "ConflictError")
    await ok(client, admin_token, "DELETE", "/api/v1/channels/edge?arch=arm64", 204)
    await expect_error(await call(client, admin_token, "GET", "/api/v1/channels/edge"), 404)
    await expect_error(await call(client, admin_token, "DELETE", "/api/v1/channels/edge"), 404)
    (made,) = await activity(engine, "channel_create")
    (gone,) = await activity(engine, "channel_delete")
    assert made.detail["new"]["name"] == gone.detail["old"]["name"] == "edge"
    assert made.actor == gone.actor == "ops"


async def test_channel_names_per_app(client: Any, admin_token: str, engine: AsyncEngine) -> None:
    """A channel name in two apps: Flatcar's unless the app is named; a name only a custom app
    has is found without it. Catches `channel set` changing the wrong app's channel, and a set
    logged without the old version or without the groups following the channel."""
    await make_app(client, admin_token)
    await ok(
        client, admin_token, "POST", "/api/v1/packages", 201, json=external("1.2.0", app=AGENT)
    )
    for name in ("stable", "nightly"):
        body = {"name": name, "arch": "amd64", "app": AGENT}
        await ok(client, admin_token, "POST", "/api/v1/channels", 201, json=body)
    await ok(
        client,
        admin_token,
        "POST",
        "/api/v1/groups",
        201,
        json={"name": "agents", "arch": "amd64", "channel": "stable", "app": AGENT},
    )
    shown = await ok(client, admin_token, "GET", "/api/v1/channels/stable?arch=amd64")
    assert shown["app_id"] == FLATCAR_APP_ID
    shown = await ok(client, admin_token, "GET", "/api/v1/channels/stable?arch=amd64&app=agent")
    assert shown["app_id"] == AGENT and shown["groups"] == ["agents"]
    assert (await ok(client, admin_token, "GET", "/api/v1/channels/nightly"))["app_id"] == AGENT

    # Flatcar has no 1.2.0: setting Flatcar's stable to it is a 404; the agent's works.
    body = {"arch": "amd64", "version": "1.2.0"}
    resp = await call(client, admin_token, "PUT", "/api/v1/channels/stable", json=body)
    await expect_error(resp, 404, "NotFoundError")
    set_ = await ok(
        client, admin_token, "PUT", "/api/v1/channels/stable", json={**body, "app": AGENT}
    )
    assert (set_["app_id"], set_["version"]) == (AGENT, "1.2.0")
    listed = await ok(client, admin_token, "GET", "/api/v1/channels?app=agent")
    assert {c["name"]: c["version"] for c in listed["channels"]} == {
        "nightly": None,
        "stable": "1.2.0",
    }
    (entry,) = await activity(engine, "channel_set")
    assert entry.detail["changes"] == {"version": [None, "1.2.0"]}
    group = await ok(client, admin_token, "GET", "/api/v1/groups/agents")
    assert entry.group_id == group["id"] and entry.actor == "ops"
    # Pointing it at what it offers already changes nothing and logs nothing.
    await ok(client, admin_token, "PUT", "/api/v1/channels/stable", json={**body, "app": AGENT})
    assert len(await activity(engine, "channel_set")) == 1


# -- groups --------------------------------------------------------------------------------------


async def test_group_update(client: Any, admin_token: str, engine: AsyncEngine) -> None:
    """Catches a rename onto another group's name or track, a channel of another arch or app,
    a PATCH that touches what it does not name (the policy), and a change logged without its
    old values."""
    body = {"name": "canary", "arch": "amd64", "channel": "stable", "description": "first"}
    created = await ok(client, admin_token, "POST", "/api/v1/groups", 201, json=body)
    change = {"name": "early", "track": "early-track", "channel": "beta", "description": "new"}
    changed = await ok(
        client, admin_token, "PATCH", "/api/v1/groups/canary?arch=amd64", json=change
    )
    assert {k: changed[k] for k in change} == change
    assert changed["id"] == created["id"] and changed["policy"] == created["policy"]
    (entry,) = await activity(engine, "group_update")
    assert entry.group_id == created["id"] and entry.actor == "ops"
    assert entry.detail["changes"] == {
        "name": ["canary", "early"],
        "track": ["canary", "early-track"],
        "channel": ["stable", "beta"],
        "description": ["first", "new"],
    }
    (made,) = await activity(engine, "group_create")
    assert made.detail["new"]["name"] == "canary"

    for patch, status in (
        ({"name": "stable"}, 409),
        ({"track": "beta"}, 409),
        ({"channel": "nope"}, 404),
        ({"name": "bad name"}, 400),
        ({"policy": {}}, 400),
        ({"arch": "arm64"}, 400),
        ({"description": 5}, 400),
    ):
        resp = await call(client, admin_token, "PATCH", "/api/v1/groups/early", json=patch)
        await expect_error(resp, status)
    resp = await call(client, admin_token, "PATCH", "/api/v1/groups/nope", json={"name": "x"})
    await expect_error(resp, 404, "NotFoundError")
    # Only the first change was applied.
    shown = await ok(client, admin_token, "GET", "/api/v1/groups/early")
    assert (shown["name"], shown["track"], shown["channel"]) == ("early", "early-track", "beta")


async def test_group_delete_refused_while_hosts_are_in_it(
    client: Any, admin_token: str, engine: AsyncEngine
) -> None:
    """Catches a delete that drops the group under its hosts (their state would lose its group
    and its rollout history silently), and one whose refusal does not say how many."""
    body = {"name": "canary", "arch": "amd64", "channel": "stable"}
    created = await ok(client, admin_token, "POST", "/api/v1/groups", 201, json=body)
    await check(client, Host("d00dd00dd00dd00dd00dd00dd00dd00d", track="canary"))
    resp = await call(client, admin_token, "DELETE", "/api/v1/groups/canary")
    assert "1 hosts" in await expect_error(resp, 409, "ConflictError")

    await ok(client, admin_token, "POST", "/api/v1/groups", 201, json={**body, "name": "empty"})
    await ok(client, admin_token, "DELETE", "/api/v1/groups/empty?arch=amd64", 204)
    await expect_error(await call(client, admin_token, "GET", "/api/v1/groups/empty"), 404)
    await expect_error(await call(client, admin_token, "DELETE", "/api/v1/groups/empty"), 404)
    (entry,) = await activity(engine, "group_delete")
    assert entry.detail["old"]["name"] == "empty" and entry.group_id is None
    shown = await ok(client, admin_token, "GET", f"/api/v1/groups/{created['id']}")
    assert shown["name"] == "canary"


# -- packages ------------------------------------------------------------------------------------


async def test_package_delete_names_every_channel_and_is_logged(
    client: Any, admin_token: str, engine: AsyncEngine
) -> None:
    """Catches a refusal that names one channel of several, and package changes missing from
    the activity log."""
    package = await ok(client, admin_token, "POST", "/api/v1/packages", 201, json=external())
    for name in ("beta", "alpha"):
        body = {"arch": "amd64", "version": package["version"]}
        await ok(client, admin_token, "PUT", f"/api/v1/channels/{name}", json=body)
    shown = await ok(client, admin_token, "GET", f"/api/v1/packages/{package['id']}")
    assert shown == package
    resp = await call(client, admin_token, "DELETE", f"/api/v1/packages/{package['id']}")
    detail = await expect_error(resp, 409, "ConflictError")
    assert "alpha (amd64), beta (amd64)" in detail
    (added,) = await activity(engine, "package_add")
    assert added.detail["new"]["id"] == package["id"] and added.actor == "ops"

    other = await ok(
        client, admin_token, "POST", "/api/v1/packages", 201, json=external("4152.2.4")
    )
    await ok(client, admin_token, "DELETE", f"/api/v1/packages/{other['id']}", 204)
    (gone,) = await activity(engine, "package_delete")
    assert gone.detail["old"]["version"] == "4152.2.4"


async def test_a_name_in_two_apps_but_not_flatcar_needs_the_app(
    client: Any, admin_token: str
) -> None:
    """Catches a lookup that picks one of two apps' channels or groups at random."""
    for app_id, name in ((AGENT, "agent"), ("io.example.other", "other")):
        await make_app(client, admin_token, app_id, name)
        channel = {"name": "nightly", "arch": "amd64", "app": name}
        await ok(client, admin_token, "POST", "/api/v1/channels", 201, json=channel)
        group = {"name": "fleet", "arch": "amd64", "channel": "nightly", "app": name}
        await ok(client, admin_token, "POST", "/api/v1/groups", 201, json=group)
    for path in ("/api/v1/channels/nightly", "/api/v1/groups/fleet", "/api/v1/groups/fleet/policy"):
        detail = await expect_error(await call(client, admin_token, "GET", path), 400)
        assert "agent, other" in detail and "--app" in detail, path
        shown = await ok(client, admin_token, "GET", f"{path}?app=other")
        assert shown.get("app_id", "io.example.other") == "io.example.other"
    group = await ok(client, admin_token, "GET", "/api/v1/groups/fleet?app=agent")
    assert group["app_id"] == AGENT
