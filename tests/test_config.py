"""The daemon's config: the example documents every key, environment overrides, errors that name
the key or variable, and secrets only from the environment or files."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from bulkd.cli import main
from bulkd.config import Config, _Document, load_config
from bulkd.errors import ConfigError
from bulkd.secret import MASK

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "config" / "bulkd.example.toml"


def write(tmp_path: Path, text: str, name: str = "bulkd.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def config_error(path: Path | None = None, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path, env or {})
    return info.value


# -- the example documents every key ------------------------------------------------------------

_SECTION = re.compile(r"^#?\s*\[\[?([a-z_.]+)\]\]?\s*$")
_KEY = re.compile(r"^#?\s*([a-z_]+)\s*=")


def documented_keys(text: str) -> set[str]:
    """Dotted keys the example names, set or commented out (``# key = ...`` under its section)."""
    keys: set[str] = set()
    section = ""
    for line in text.splitlines():
        if match := _SECTION.match(line.strip()):
            section = match.group(1)
            keys.add(section)
        elif match := _KEY.match(line.strip()):
            keys.add(f"{section}.{match.group(1)}" if section else match.group(1))
    return keys


def model_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every dotted key of the config model, nested sections and route fields included."""
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        keys.add(dotted)
        annotation: Any = field.annotation
        inner = getattr(annotation, "__args__", (annotation,))[0]
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            keys |= model_keys(inner, f"{dotted}.")
    return keys


def test_example_config_loads_and_resolves_directories_under_data_dir() -> None:
    config = load_config(EXAMPLE, {})
    assert isinstance(config, Config)
    assert config.source == EXAMPLE
    data = Path("var")
    assert (config.inbox_dir, config.work_dir, config.done_dir, config.failed_dir) == (
        data / "inbox",
        data / "work",
        data / "done",
        data / "failed",
    )
    assert (config.spool_dir, config.state_dir, config.simulator_store_dir) == (
        data / "spool",
        data / "state",
        data / "hubsim",
    )
    assert config.uses_simulator
    assert config.api_token is None


def test_every_model_key_is_documented_in_the_example() -> None:
    documented = documented_keys(EXAMPLE.read_text())
    keys = model_keys(_Document)
    assert keys - documented == set(), "keys bulkd reads but the example does not document"
    assert documented - keys == set(), "keys the example documents but bulkd does not read"


def test_set_values_in_the_example_are_the_defaults() -> None:
    """The example promises 'every key bulkd reads, with its default'."""
    example = tomllib.loads(EXAMPLE.read_text())
    defaults = _Document()
    for section, body in example.items():
        if not isinstance(body, dict):
            assert getattr(defaults, section) == Path(body), section
            continue
        model = getattr(defaults, section)
        for key, value in body.items():
            expected = getattr(model, key)
            assert (list(expected) if isinstance(expected, tuple) else expected) == value, f"{section}.{key}"


def test_defaults_without_a_file() -> None:
    config = load_config(None, {})
    assert config.source is None
    assert config.data_dir == Path("var")
    assert config.upload.concurrency == 8
    assert config.upload.requests_per_second == 10.0
    assert config.status.host == "127.0.0.1"


def test_explicit_directories_win_over_data_dir(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'data_dir = "/srv/bulkd"\n[inbox]\ndir = "/in"\ndone_dir = "/archive"\n'
        '[state]\ndir = "/local/state"\n',
    )
    config = load_config(path, {})
    assert config.inbox_dir == Path("/in")
    assert config.done_dir == Path("/archive")
    assert config.state_dir == Path("/local/state")
    assert config.work_dir == Path("/srv/bulkd/work")


def test_routes_are_read_in_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[[inbox.routes]]\n"
        'glob = "shopify/orders/**"\ndataset_id = "ds_orders"\nrecord_type = "purchase"\n'
        'profile = "profiles/orders.toml"\n'
        "[[inbox.routes]]\n"
        'glob = "**"\ndataset_id = "ds_rest"\nrecord_type = "customer_record"\n',
    )
    routes = load_config(path, {}).inbox.routes
    assert [(r.glob, r.dataset_id, r.record_type) for r in routes] == [
        ("shopify/orders/**", "ds_orders", "purchase"),
        ("**", "ds_rest", "customer_record"),
    ]
    assert routes[0].profile == Path("profiles/orders.toml")
    assert routes[1].profile is None


# -- the environment ------------------------------------------------------------------------


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[upload]\nconcurrency = 4\n[status]\nenabled = true\n")
    env = {
        "BULKD_UPLOAD_CONCURRENCY": "16",
        "BULKD_DATA_DIR": "/data",
        "BULKD_STATUS_ENABLED": "false",
        "BULKD_UPLOAD_ALLOWED_URL_HOSTS": "a.example.com, b.example.com,",
        "BULKD_CONVERT_MAX_REJECT_RATIO": "0.05",
        "BULKD_SERVICE_LOG_LEVEL": "debug",
    }
    config = load_config(path, env)
    assert config.upload.concurrency == 16
    assert config.data_dir == Path("/data")
    assert config.inbox_dir == Path("/data/inbox")
    assert config.status.enabled is False
    assert config.upload.allowed_url_hosts == ("a.example.com", "b.example.com")
    assert config.convert.max_reject_ratio == 0.05
    assert config.service.log_level == "debug"


def test_a_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    error = config_error(None, {"BULKD_UPLOAD_CONCURRENCY": "lots"})
    assert error.key == "upload.concurrency"
    assert "BULKD_UPLOAD_CONCURRENCY" in str(error)
    error = config_error(None, {"BULKD_SERVICE_LOG_FORMAT": "xml"})
    assert "service.log_format" in str(error)
    assert "BULKD_SERVICE_LOG_FORMAT" in str(error)


def test_a_misspelt_environment_variable_is_refused() -> None:
    error = config_error(None, {"BULKD_UPLOAD_REQUESTS_PER_SECND": "5"})
    assert "BULKD_UPLOAD_REQUESTS_PER_SECND" in str(error)


def test_the_non_key_variables_are_accepted(tmp_path: Path) -> None:
    token_file = write(tmp_path, "from-file\n", "token")
    env = {
        "BULKD_API_TOKEN_FILE": str(token_file),
        "BULKD_STATUS_TOKEN": "status-secret",
        "BULKD_CRASHPOINT": "",
    }
    config = load_config(None, env)
    assert config.api_token is not None
    assert config.api_token.reveal() == "from-file"


# -- errors name the key --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[upload]\nconcurrency = 0\n", "upload.concurrency"),
        ("[upload]\nrequests_per_second = -1\n", "upload.requests_per_second"),
        ('[inbox]\nsettle_seconds = "soon"\n', "inbox.settle_seconds"),
        ("[inbox]\nmax_depth = 100\n", "inbox.max_depth"),
        ("[convert]\nmax_reject_ratio = 1.5\n", "convert.max_reject_ratio"),
        ("[convert]\ngzip_level = 9\n", "convert.gzip_level"),
        ("[spool]\nmax_bytes = 10\n", "spool.max_bytes"),
        ("[simulator]\nport = 70000\n", "simulator.port"),
        ('[service]\nlog_level = "loud"\n', "service.log_level"),
        (
            '[[inbox.routes]]\nglob = "*"\ndataset_id = "d"\nrecord_type = "shoe"\n',
            "inbox.routes.0.record_type",
        ),
        (
            '[[inbox.routes]]\nglob = "*"\ndataset_id = "../x"\nrecord_type = "product"\n',
            "inbox.routes.0.dataset_id",
        ),
        ('[upload]\napi_url = "  "\n', "<document>"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, toml: str, key: str) -> None:
    error = config_error(write(tmp_path, toml))
    assert error.key == key
    assert str(error).startswith(f"config key '{key}': ")


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[upload]\nrequests_per_secnd = 5\n", "upload.requests_per_secnd"),
        ("[uplod]\nconcurrency = 5\n", "uplod"),
        ("inbox_dir = 'x'\n", "inbox_dir"),
        (
            '[[inbox.routes]]\nglob = "*"\ndataset_id = "d"\nrecord_type = "product"\nmode = 1\n',
            "inbox.routes.0.mode",
        ),
    ],
)
def test_unknown_keys_are_refused(tmp_path: Path, toml: str, key: str) -> None:
    error = config_error(write(tmp_path, toml))
    assert error.key == key
    assert "unknown key" in str(error)


def test_unreadable_or_invalid_files_are_config_errors(tmp_path: Path) -> None:
    assert config_error(tmp_path / "missing.toml").key == "--config"
    error = config_error(write(tmp_path, "[upload\nconcurrency = 1\n"))
    assert error.key == "--config"
    assert "not valid TOML" in str(error)
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b"# caf\xe9\n")
    assert "not UTF-8" in str(config_error(bad))


# -- secrets ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[upload]\ntoken = "sk-live-123456"\n', "upload.token"),
        ('[upload]\napi_token = "sk-live-123456"\n', "upload.api_token"),
        ('[status]\ntoken = "sk-live-123456"\n', "status.token"),
        ('token = "sk-live-123456"\n', "token"),
        ('[simulator]\npassword = "sk-live-123456"\n', "simulator.password"),
    ],
)
def test_inline_secrets_are_refused_without_echoing_them(tmp_path: Path, toml: str, key: str) -> None:
    error = config_error(write(tmp_path, toml))
    assert error.key == key
    assert "BULKD_API_TOKEN" in str(error)
    assert "sk-live-123456" not in str(error)


def test_token_from_the_environment_or_a_file(tmp_path: Path) -> None:
    token_file = write(tmp_path, "  file-token-42\n", "token")
    api = f'[upload]\napi_url = "https://api.example.com"\ntoken_file = "{token_file}"\n'
    path = write(tmp_path, api)
    config = load_config(path, {})
    assert config.api_token is not None
    assert config.api_token.reveal() == "file-token-42"
    assert not config.uses_simulator
    # The variable wins over the file; BULKD_API_TOKEN_FILE over the configured file.
    assert load_config(path, {"BULKD_API_TOKEN": "env-token"}).api_token.reveal() == "env-token"  # type: ignore[union-attr]
    other = write(tmp_path, "other-token", "other")
    config = load_config(path, {"BULKD_API_TOKEN_FILE": str(other)})
    assert config.api_token.reveal() == "other-token"  # type: ignore[union-attr]
    # Text forms of the config never show it.
    assert "file-token-42" not in repr(load_config(path, {}))
    assert MASK in repr(load_config(path, {}))


def test_token_file_problems_name_where_the_file_was_set(tmp_path: Path) -> None:
    api = '[upload]\napi_url = "https://api.example.com"\ntoken_file = "{}"\n'
    missing = config_error(write(tmp_path, api.format(tmp_path / "nope")))
    assert missing.key == "upload.token_file"
    assert "cannot read the token file" in str(missing)
    empty = write(tmp_path, "  \n", "empty")
    assert "is empty" in str(config_error(write(tmp_path, api.format(empty))))
    error = config_error(None, {"BULKD_API_TOKEN_FILE": str(tmp_path / "nope")})
    assert error.key == "BULKD_API_TOKEN_FILE"


def test_an_api_without_a_token_is_refused(tmp_path: Path) -> None:
    error = config_error(write(tmp_path, '[upload]\napi_url = "https://api.example.com"\n'))
    assert error.key == "upload.token_file"
    assert "BULKD_API_TOKEN" in str(error)
    error = config_error(None, {"BULKD_UPLOAD_API_URL": "https://api.example.com", "BULKD_API_TOKEN": "  "})
    assert error.key == "upload.token_file"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "status.example.com"])
def test_a_non_loopback_status_host_requires_a_token(tmp_path: Path, host: str) -> None:
    path = write(tmp_path, f'[status]\nhost = "{host}"\n')
    error = config_error(path)
    assert error.key == "status.host"
    assert "BULKD_STATUS_TOKEN" in str(error)
    config = load_config(path, {"BULKD_STATUS_TOKEN": "bearer-1"})
    assert config.status_token is not None
    assert config.status_token.reveal() == "bearer-1"
    # A disabled status server binds nothing, so it needs no token.
    assert (
        load_config(write(tmp_path, f'[status]\nhost = "{host}"\nenabled = false\n'), {}).status_token is None
    )


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_status_hosts_need_no_token(tmp_path: Path, host: str) -> None:
    assert load_config(write(tmp_path, f'[status]\nhost = "{host}"\n'), {}).status_token is None


def test_a_hostname_that_only_looks_like_loopback_requires_a_token(tmp_path: Path) -> None:
    config_error(write(tmp_path, '[status]\nhost = "127.0.0.1.attacker.example"\n'))


def test_bulkd_run_reports_config_errors_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "[upload]\nconcurrency = 0\n")
    assert main(["run", "--config", str(path), "--once"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bulkd: config key 'upload.concurrency': ")
    path = write(tmp_path, '[upload]\ntoken = "sk-live-123456"\n')
    assert main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "upload.token" in err
    assert "sk-live-123456" not in err
