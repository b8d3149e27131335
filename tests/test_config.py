"""Tables for nebula.config.load_settings: precedence, coercion, refusals and base_url.

The environment is always handed in (`environ=`), so nothing here reads or changes os.environ.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from nebula.config import (
    DEFAULT_DB,
    DEFAULT_LISTEN,
    Settings,
    client_env,
    load_settings,
    split_listen,
)
from nebula.errors import ConfigError


def _toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "nebula.toml"
    path.write_text(text)
    return str(path)


def test_defaults() -> None:
    s = load_settings({}, environ={})
    assert s == Settings()
    assert s.db == DEFAULT_DB
    assert s.listen == DEFAULT_LISTEN
    assert s.trusted_key == ()
    assert s.trust_flatcar_key is True
    assert s.migrate is True
    assert s.base_url == "http://127.0.0.1:8000"


# -- precedence: flags > env > TOML file > defaults ---------------------------------------------

LAYERS = ["flag", "env", "file"]


@pytest.mark.parametrize(
    "present",
    [
        ("flag", "env", "file"),
        ("flag", "env"),
        ("flag", "file"),
        ("env", "file"),
        ("flag",),
        ("env",),
        ("file",),
        (),
    ],
    ids=lambda p: "+".join(p) or "none",
)
def test_precedence(tmp_path: Path, present: tuple[str, ...]) -> None:
    flags: dict[str, Any] = {}
    env: dict[str, str] = {}
    lines = []
    if "flag" in present:
        flags.update(listen="10.0.0.1:1001", poll_interval=3001, migrate=False)
    if "env" in present:
        env.update(NEBULA_LISTEN="10.0.0.2:1002", NEBULA_POLL_INTERVAL="3002", NEBULA_MIGRATE="no")
    if "file" in present:
        lines += ['listen = "10.0.0.3:1003"', "poll_interval = 3003", "migrate = false"]
    path = _toml(tmp_path, "\n".join(lines) + "\n")
    s = load_settings(flags, environ=env, config_file=path)
    winner = next((layer for layer in LAYERS if layer in present), None)
    if winner is None:
        assert (s.listen, s.poll_interval, s.migrate) == (DEFAULT_LISTEN, 0, True)
    else:
        n = LAYERS.index(winner) + 1
        assert (s.listen, s.poll_interval, s.migrate) == (f"10.0.0.{n}:100{n}", 3000 + n, False)


def test_each_setting_keeps_its_own_layer(tmp_path: Path) -> None:
    """Layers merge per setting: a flag for one setting does not hide the file's other ones."""
    path = _toml(tmp_path, 'db = "sqlite:///from-file.db"\nlisten = "10.0.0.3:1003"\n')
    s = load_settings(
        {"listen": "10.0.0.1:1001"},
        environ={"NEBULA_PAYLOAD_DIR": "/srv/payloads"},
        config_file=path,
    )
    assert s.db == "sqlite:///from-file.db"
    assert s.listen == "10.0.0.1:1001"
    assert s.payload_dir == "/srv/payloads"


def test_config_file_from_flag_and_env(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'public_url = "https://updates.example.com"\n')
    assert load_settings({"config": path}, environ={}).public_url == "https://updates.example.com"
    assert (
        load_settings({}, environ={"NEBULA_CONFIG": path}).public_url
        == "https://updates.example.com"
    )


def test_unset_flags_do_not_override(tmp_path: Path) -> None:
    """click hands in None for options not given and () for unused multiple options."""
    s = load_settings(
        {"listen": None, "trusted_key": (), "migrate": None},
        environ={"NEBULA_LISTEN": "0.0.0.0:9000", "NEBULA_TRUSTED_KEY": "a.pem"},
    )
    assert s.listen == "0.0.0.0:9000"
    assert s.trusted_key == ("a.pem",)
    assert s.migrate is True


def test_empty_env_value_is_unset() -> None:
    assert load_settings({}, environ={"NEBULA_LISTEN": ""}).listen == DEFAULT_LISTEN


def test_toml_keys_may_use_dashes(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'public-url = "https://u.example"\ntrust-flatcar-key = false\n')
    s = load_settings({}, environ={}, config_file=path)
    assert s.public_url == "https://u.example"
    assert s.trust_flatcar_key is False


# -- coercion -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ("a.pem", ("a.pem",)),
        (os.pathsep.join(["a.pem", "b.pem"]), ("a.pem", "b.pem")),
        (
            os.pathsep.join(["/etc/nebula/a.pem", "", "/etc/nebula/b.pem", ""]),
            ("/etc/nebula/a.pem", "/etc/nebula/b.pem"),
        ),
    ],
)
def test_trusted_key_env_is_a_path_list(env: str, expected: tuple[str, ...]) -> None:
    assert load_settings({}, environ={"NEBULA_TRUSTED_KEY": env}).trusted_key == expected


def test_trusted_key_from_toml_list_and_flags(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'trusted_key = ["x.pem", "y.pem"]\n')
    assert load_settings({}, environ={}, config_file=path).trusted_key == ("x.pem", "y.pem")
    s = load_settings({"trusted_key": ("z.pem",)}, environ={}, config_file=path)
    assert s.trusted_key == ("z.pem",)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        ("yes", True),
        ("on", True),
        (" on ", True),
        ("0", False),
        ("false", False),
        ("False", False),
        ("no", False),
        ("off", False),
    ],
)
def test_bool_from_env(text: str, value: bool) -> None:
    assert load_settings({}, environ={"NEBULA_MIGRATE": text}).migrate is value


def test_numbers_from_env() -> None:
    s = load_settings(
        {},
        environ={
            "NEBULA_POLL_INTERVAL": "3600",
            "NEBULA_CACHE_TTL": "0.5",
            "NEBULA_DB_POOL_SIZE": "20",
        },
    )
    assert (s.poll_interval, s.cache_ttl, s.db_pool_size) == (3600, 0.5, 20)
    assert isinstance(s.poll_interval, int) and isinstance(s.cache_ttl, float)


# -- refusals, each with a message that names the problem -----------------------------------------


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        ({"listen": "localhost"}, {}, "listen must be HOST:PORT, got 'localhost'"),
        ({}, {"NEBULA_LISTEN": "127.0.0.1:http"}, "listen must be HOST:PORT"),
        ({"listen": "127.0.0.1:0"}, {}, "listen must be HOST:PORT"),
        ({"listen": "127.0.0.1:65536"}, {}, "listen must be HOST:PORT"),
        ({"listen": "127.0.0.1:-1"}, {}, "listen must be HOST:PORT"),
        ({"listen": "127.0.0.1:\u00b2"}, {}, "listen must be HOST:PORT"),  # superscript two
        ({}, {"NEBULA_MIGRATE": "maybe"}, "setting 'migrate': cannot use 'maybe'"),
        ({}, {"NEBULA_TRUST_FLATCAR_KEY": ""}, None),  # empty is unset, not an error
        ({}, {"NEBULA_TRUST_FLATCAR_KEY": "2"}, "setting 'trust_flatcar_key'"),
        ({}, {"NEBULA_POLL_INTERVAL": "soon"}, "setting 'poll_interval': cannot use 'soon'"),
        ({}, {"NEBULA_CACHE_TTL": "fast"}, "setting 'cache_ttl'"),
        ({"public_url": "updates.example.com"}, {}, "public_url must start with http://"),
        ({"bogus": 1}, {}, "unknown setting 'bogus'"),
        # Values every later use would trip over: refused at load, not on every request.
        ({}, {"NEBULA_POLL_INTERVAL": "-1"}, "poll_interval"),
        ({}, {"NEBULA_CACHE_TTL": "-1"}, "cache_ttl"),
        ({}, {"NEBULA_DB_POOL_SIZE": "0"}, "db_pool_size"),
        ({}, {"NEBULA_LOG_LEVEL": "verbose"}, "log_level"),
        ({}, {"NEBULA_HEADER_TIMEOUT": "0"}, "header_timeout must be seconds > 0"),
        ({}, {"NEBULA_BODY_TIMEOUT": "-1"}, "body_timeout must be seconds > 0"),
        ({}, {"NEBULA_BODY_TIMEOUT": "nan"}, "body_timeout must be seconds > 0"),
        ({}, {"NEBULA_MAX_HEADER_BYTES": "100"}, "max_header_bytes must be at least 1024"),
        ({}, {"NEBULA_AUTH_FAILURE_LIMIT": "-1"}, "auth_failure_limit must be 0"),
        ({}, {"NEBULA_AUTH_FAILURE_WINDOW": "0"}, "auth_failure_window must be seconds > 0"),
    ],
)
def test_refused(flags: dict[str, Any], env: dict[str, str], message: str | None) -> None:
    if message is None:
        load_settings(flags, environ=env)
        return
    with pytest.raises(ConfigError) as err:
        load_settings(flags, environ=env)
    assert message in str(err.value)


def test_bool_from_toml_must_be_a_bool_word(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'migrate = "sometimes"\n')
    with pytest.raises(ConfigError, match="setting 'migrate': cannot use 'sometimes'"):
        load_settings({}, environ={}, config_file=path)


def test_unknown_toml_key(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'listen = "127.0.0.1:8000"\nlisen = "typo"\n')
    with pytest.raises(ConfigError) as err:
        load_settings({}, environ={}, config_file=path)
    assert str(err.value) == f"config file {path}: unknown setting 'lisen'"


def test_toml_table_is_an_unknown_key(tmp_path: Path) -> None:
    path = _toml(tmp_path, '[server]\nlisten = "127.0.0.1:8000"\n')
    with pytest.raises(ConfigError, match="unknown setting 'server'"):
        load_settings({}, environ={}, config_file=path)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as err:
        load_settings({}, environ={}, config_file=str(path))
    assert str(err.value) == f"config file {path} does not exist"


def test_missing_file_named_by_env(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings({}, environ={"NEBULA_CONFIG": str(path)})


def test_bad_toml(tmp_path: Path) -> None:
    path = _toml(tmp_path, "listen = \n")
    with pytest.raises(ConfigError, match=f"config file {path}: "):
        load_settings({}, environ={}, config_file=path)


def test_bad_listen_in_file_is_refused(tmp_path: Path) -> None:
    path = _toml(tmp_path, "listen = 8000\n")
    with pytest.raises(ConfigError, match="listen must be HOST:PORT, got '8000'"):
        load_settings({}, environ={}, config_file=path)


def test_settings_are_frozen() -> None:
    s = load_settings({}, environ={})
    with pytest.raises(AttributeError):
        s.listen = "0.0.0.0:1"  # type: ignore[misc]


# -- listen and base_url ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("127.0.0.1:8000", "127.0.0.1", 8000),
        ("0.0.0.0:80", "0.0.0.0", 80),
        (":8080", "", 8080),
        ("[::1]:8443", "::1", 8443),
        ("updates.example.com:65535", "updates.example.com", 65535),
    ],
)
def test_split_listen(listen: str, host: str, port: int) -> None:
    assert split_listen(listen) == (host, port)


@pytest.mark.parametrize(
    ("flags", "base_url"),
    [
        ({}, "http://127.0.0.1:8000"),
        ({"listen": "0.0.0.0:9000"}, "http://127.0.0.1:9000"),  # a wildcard is not reachable
        ({"listen": ":9000"}, "http://127.0.0.1:9000"),
        ({"listen": "[::]:9000"}, "http://127.0.0.1:9000"),
        ({"listen": "[::1]:9000"}, "http://[::1]:9000"),
        ({"listen": "10.1.2.3:80"}, "http://10.1.2.3:80"),
        ({"public_url": "https://updates.example.com"}, "https://updates.example.com"),
        ({"public_url": "https://updates.example.com/"}, "https://updates.example.com"),
        ({"public_url": "https://example.com/flatcar/"}, "https://example.com/flatcar"),
        # public_url wins over listen.
        ({"public_url": "http://lb.example:8080", "listen": "0.0.0.0:1"}, "http://lb.example:8080"),
    ],
)
def test_base_url(flags: dict[str, Any], base_url: str) -> None:
    s = load_settings(flags, environ={})
    assert s.base_url == base_url
    assert not s.base_url.endswith("/")


def test_client_env() -> None:
    assert client_env({"NEBULA_URL": "http://x", "NEBULA_TOKEN": "t"}) == ("http://x", "t")
    assert client_env({}) == (None, None)


# -- the database URL and the workers ---------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("postgres://u@h/d", "postgresql://u@h/d"),
        ("postgres+asyncpg://u@h/d", "postgresql+asyncpg://u@h/d"),
        ("postgresql://u@h/d", "postgresql://u@h/d"),
        ("sqlite:///x.db", "sqlite:///x.db"),
    ],
)
def test_database_urls_are_taken_as_written_or_as_their_alias(raw: str, expected: str) -> None:
    assert load_settings({"db": raw}, environ={}).db == expected


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("mysql://u@h/d", "unsupported database URL scheme 'mysql'"),
        ("nebula.db", "not a database URL"),
    ],
)
def test_database_urls_of_other_kinds_are_refused(raw: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load_settings({"db": raw}, environ={})


def test_workers_on_sqlite_are_one() -> None:
    assert load_settings({"workers": "1"}, environ={}).workers == 1
    with pytest.raises(ConfigError, match="SQLite has one writer"):
        load_settings({"workers": "2"}, environ={})
    with pytest.raises(ConfigError, match="workers must be"):
        load_settings({"workers": "-1", "db": "postgresql://u@h/d"}, environ={})
    assert (
        load_settings({}, environ={"NEBULA_WORKERS": "4", "NEBULA_DB": "postgres://u@h/d"}).workers
        == 4
    )
