"""The daemon's configuration: one typed model, read from TOML and then from ``BULKD_*`` variables.

Why it is shaped like this:

* **Fail at start, name the key.** Every value is checked when the daemon starts, and an error
  names the dotted TOML key (``upload.concurrency``) or the environment variable that set it, so
  a typo never surfaces hours later as a stuck upload. Unknown keys are errors too: a misspelt
  ``requests_per_secnd`` must not silently fall back to a default.
* **Environment wins over the file.** Containers configure by environment: ``BULKD_<SECTION>_<KEY>``
  (``BULKD_UPLOAD_CONCURRENCY=16``) overrides ``[section] key``; top-level keys are ``BULKD_<KEY>``.
* **Secrets never sit in the file or on the command line.** The API token comes from
  ``BULKD_API_TOKEN`` or the file named by ``upload.token_file`` / ``BULKD_API_TOKEN_FILE``
  (likewise ``BULKD_STATUS_TOKEN`` / ``status.token_file``); a ``token`` key in the TOML is refused.
  Tokens are held as :class:`~bulkd.secret.Secret`, whose text forms are masked.
* **Paths** are taken as written; relative ones are relative to the working directory. Every
  directory defaults to a place under ``data_dir`` so that one volume holds the whole state.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bulkd.chunk import ChunkLimits
from bulkd.durable import CRASHPOINT_ENV
from bulkd.errors import ConfigError
from bulkd.schemas import RECORD_TYPES
from bulkd.secret import Secret

__all__ = [
    "ENV_PREFIX",
    "Config",
    "ConvertSection",
    "InboxSection",
    "RouteSection",
    "ServiceSection",
    "SimulatorSection",
    "SpoolSection",
    "StatusSection",
    "UploadSection",
    "load_config",
]

ENV_PREFIX = "BULKD_"
_API_TOKEN_ENV = "BULKD_API_TOKEN"
_STATUS_TOKEN_ENV = "BULKD_STATUS_TOKEN"
_CHUNK_DEFAULTS = ChunkLimits()
_SECRET_KEYS = frozenset({"token", "api_token", "password", "secret"})


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class RouteSection(_Section):
    """One routing rule: files whose path (relative to the inbox) matches ``glob`` go here."""

    glob: str = Field(min_length=1)
    dataset_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    record_type: str
    profile: Path | None = None
    """A mapping profile (TOML) for these files; see the README's "Mapping profiles"."""

    @field_validator("record_type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value not in RECORD_TYPES:
            raise ValueError(f"unknown record type {value!r}; expected one of {', '.join(RECORD_TYPES)}")
        return value


class InboxSection(_Section):
    """Where files arrive and where they go when finished."""

    dir: Path | None = None
    """Watched directory (default ``<data_dir>/inbox``); layout ``<dataset_id>/<record_type>/<file>``."""
    work_dir: Path | None = None
    """Claimed files wait here (default ``<data_dir>/work``); must share the inbox's filesystem."""
    done_dir: Path | None = None
    failed_dir: Path | None = None
    settle_seconds: float = Field(default=5.0, ge=0)
    poll_interval: float = Field(default=2.0, gt=0)
    max_depth: int = Field(default=8, ge=1, le=64)
    """How deep routing rules look below the inbox (the default layout is always 3 levels)."""
    routes: tuple[RouteSection, ...] = ()


class SpoolSection(_Section):
    """Chunks wait here between conversion and delivery."""

    dir: Path | None = None
    max_bytes: int = Field(default=20 << 30, ge=1 << 20)
    """Intake pauses while undelivered chunks take more than this (nothing is evicted)."""
    keep_delivered: bool = False
    """Keep chunk files after delivery (by default they are deleted once the job is archived)."""


class StateSection(_Section):
    dir: Path | None = None
    """The ledger (SQLite) and the instance lock (default ``<data_dir>/state``)."""


class ConvertSection(_Section):
    """Conversion settings shared by all routes."""

    max_reject_ratio: float | None = Field(default=None, ge=0, le=1)
    """Fail a file when more than this share of its rows is rejected (unset: never)."""
    chunk_max_records: int = Field(default=_CHUNK_DEFAULTS.max_records, ge=1)
    chunk_max_bytes: int = Field(default=_CHUNK_DEFAULTS.max_ndjson_bytes, ge=1024)
    """Uncompressed NDJSON bytes per chunk."""
    gzip_level: int = Field(default=_CHUNK_DEFAULTS.gzip_level, ge=0, le=3)
    """0-2: ISA-L (fastest, ~1.34x zlib-6 size); 3: ISA-L 2 and zlib-ng 5 mixed (~1.23x zlib-6 size)."""
    schema_dir: Path | None = None
    """Custom schemas: ``<schema_dir>/<record_type>.json`` replaces the shipped schema when present."""
    parallel_files: int = Field(default=1, ge=1, le=64)
    """Files converted at the same time (each conversion already uses several threads)."""


class UploadSection(_Section):
    """How to reach Lexer's File Upload API (token: ``BULKD_API_TOKEN`` or ``token_file``)."""

    api_url: str | None = None
    """Unset: the embedded simulator (see ``[simulator]``) receives the uploads: a dry run."""
    token_file: Path | None = None
    concurrency: int = Field(default=8, ge=1, le=256)
    requests_per_second: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=8, ge=1)
    backoff_base: float = Field(default=0.5, ge=0)
    backoff_cap: float = Field(default=30.0, ge=0)
    retry_budget: int = Field(default=100, ge=0)
    allowed_url_hosts: tuple[str, ...] = ()
    """Hosts presigned URLs may point at (empty: the API's host only)."""
    require_https: bool = True
    connect_timeout: float = Field(default=30.0, gt=0)
    read_timeout: float = Field(default=300.0, gt=0)
    min_throughput_bytes_per_s: int = Field(default=256 * 1024, gt=0)
    url_refresh_limit: int = Field(default=3, ge=0)
    retry_after_cap: float = Field(default=60.0, ge=0)
    retry_delivery_after: float = Field(default=60.0, gt=0)
    """When a chunk's retries run out, the job tries again after this many seconds."""


class SimulatorSection(_Section):
    """The embedded Lexer simulator, used when ``upload.api_url`` is unset."""

    host: str = "127.0.0.1"
    port: int = Field(default=8787, ge=0, le=65535)
    """0 picks a free port."""
    store_dir: Path | None = None
    url_ttl_seconds: float = Field(default=900.0, ge=0)


class StatusSection(_Section):
    """The read-only status server (HTTP API, metrics, dashboard)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8780, ge=0, le=65535)
    token_file: Path | None = None
    """Bearer token (or ``BULKD_STATUS_TOKEN``); required when ``host`` is not a loopback address."""


class ServiceSection(_Section):
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    """On SIGTERM, in-flight uploads get this long to finish; the rest resume at the next start."""
    log_format: Literal["auto", "json", "text"] = "auto"
    """``auto``: readable text on a terminal, JSON lines otherwise (containers)."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class _Document(_Section):
    """The TOML document as written (paths unresolved, secrets not yet read)."""

    data_dir: Path = Path("var")
    inbox: InboxSection = InboxSection()
    spool: SpoolSection = SpoolSection()
    state: StateSection = StateSection()
    convert: ConvertSection = ConvertSection()
    upload: UploadSection = UploadSection()
    simulator: SimulatorSection = SimulatorSection()
    status: StatusSection = StatusSection()
    service: ServiceSection = ServiceSection()

    @model_validator(mode="after")
    def _api_url_not_blank(self) -> _Document:
        if self.upload.api_url is not None and not self.upload.api_url.strip():
            raise ValueError("upload.api_url is empty; remove it to use the embedded simulator")
        return self


@dataclass(frozen=True, slots=True)
class Config:
    """The validated configuration with every directory resolved and the secrets read."""

    source: Path | None
    """The TOML file it came from (None: defaults and environment only)."""
    data_dir: Path
    inbox_dir: Path
    work_dir: Path
    done_dir: Path
    failed_dir: Path
    spool_dir: Path
    state_dir: Path
    simulator_store_dir: Path
    inbox: InboxSection
    spool: SpoolSection
    convert: ConvertSection
    upload: UploadSection
    simulator: SimulatorSection
    status: StatusSection
    service: ServiceSection
    api_token: Secret | None
    status_token: Secret | None

    @property
    def uses_simulator(self) -> bool:
        """True when no API is configured: uploads go to the embedded simulator (a dry run)."""
        return self.upload.api_url is None


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (optional), overlay ``BULKD_*`` variables, validate, resolve and read secrets.

    Raises:
        ConfigError: naming the first key (or variable) at fault.
    """
    env = dict(os.environ if environ is None else environ)
    doc = _read_toml(path) if path is not None else {}
    _refuse_inline_secrets(doc)
    from_env = _overlay_env(doc, env)
    try:
        model = _Document.model_validate(doc)
    except ValidationError as exc:
        raise _config_error(exc, from_env) from None
    return _resolve(model, path, env)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--config", f"{path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError("--config", f"{path} is not UTF-8 text") from None


def _refuse_inline_secrets(doc: Mapping[str, Any], prefix: str = "") -> None:
    for key, value in doc.items():
        dotted = f"{prefix}{key}"
        if key in _SECRET_KEYS:
            raise ConfigError(
                dotted, "secrets do not belong in the config file; use BULKD_API_TOKEN or a token_file"
            )
        if isinstance(value, dict):
            _refuse_inline_secrets(value, f"{dotted}.")


def _env_name(section: str | None, key: str) -> str:
    return f"{ENV_PREFIX}{section.upper() + '_' if section else ''}{key.upper()}"


def _overlay_env(doc: dict[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """Copy ``BULKD_<SECTION>_<KEY>`` values over the file's; pydantic coerces the strings.

    Returns the dotted keys that came from the environment, with their variable names.
    """
    used: dict[str, str] = {}
    known = _known_variables()
    for variable in sorted(env):
        if variable.startswith(ENV_PREFIX) and variable not in known:
            raise ConfigError(variable, "unknown bulkd variable (see config/bulkd.example.toml for the keys)")
    for name, field in _Document.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, _Section):
            section = doc.setdefault(name, {})
            if not isinstance(section, dict):
                continue
            for key, sub in annotation.model_fields.items():
                variable = _env_name(name, key)
                if (value := env.get(variable)) is not None and key != "routes":
                    section[key] = _env_value(value, sub.annotation)
                    used[f"{name}.{key}"] = variable
        elif (value := env.get(_env_name(None, name))) is not None:
            doc[name] = value
            used[name] = _env_name(None, name)
    return used


def _known_variables() -> frozenset[str]:
    """Every ``BULKD_*`` variable bulkd reads: one per key, plus secrets and the test crash point."""
    names = {CRASHPOINT_ENV, _API_TOKEN_ENV, f"{_API_TOKEN_ENV}_FILE"}
    names |= {_STATUS_TOKEN_ENV, f"{_STATUS_TOKEN_ENV}_FILE"}
    for name, field in _Document.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, _Section):
            names |= {_env_name(name, key) for key in annotation.model_fields if key != "routes"}
        else:
            names.add(_env_name(None, name))
    return frozenset(names)


def _env_value(value: str, annotation: Any) -> Any:
    """Lists come from the environment as comma-separated text; the rest is left to pydantic."""
    if annotation == tuple[str, ...]:
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


def _config_error(exc: ValidationError, from_env: Mapping[str, str]) -> ConfigError:
    first = exc.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "<document>"
    message = first["msg"]
    if key in from_env:
        message = f"{message} (set by {from_env[key]})"
    if first["type"] == "extra_forbidden":
        message = "unknown key (see config/bulkd.example.toml for the keys bulkd reads)"
    return ConfigError(key, message)


def _resolve(model: _Document, source: Path | None, env: Mapping[str, str]) -> Config:
    data = model.data_dir

    def under(explicit: Path | None, default: str) -> Path:
        return explicit if explicit is not None else data / default

    inbox = model.inbox
    status_token = _secret(env, _STATUS_TOKEN_ENV, model.status.token_file, "status.token_file")
    if not _is_loopback(model.status.host) and model.status.enabled and status_token is None:
        raise ConfigError(
            "status.host",
            f"binding {model.status.host} exposes the status server; set {_STATUS_TOKEN_ENV} "
            "or status.token_file so requests must carry a bearer token",
        )
    api_token = _secret(env, _API_TOKEN_ENV, model.upload.token_file, "upload.token_file")
    if model.upload.api_url is not None and api_token is None:
        raise ConfigError(
            "upload.token_file",
            f"an API is configured but no token: set {_API_TOKEN_ENV} or upload.token_file",
        )
    return Config(
        source=source,
        data_dir=data,
        inbox_dir=under(inbox.dir, "inbox"),
        work_dir=under(inbox.work_dir, "work"),
        done_dir=under(inbox.done_dir, "done"),
        failed_dir=under(inbox.failed_dir, "failed"),
        spool_dir=under(model.spool.dir, "spool"),
        state_dir=under(model.state.dir, "state"),
        simulator_store_dir=under(model.simulator.store_dir, "hubsim"),
        inbox=inbox,
        spool=model.spool,
        convert=model.convert,
        upload=model.upload,
        simulator=model.simulator,
        status=model.status,
        service=model.service,
        api_token=api_token,
        status_token=status_token,
    )


def _secret(env: Mapping[str, str], variable: str, file_key: Path | None, key: str) -> Secret | None:
    """A token from ``variable``, else from ``<variable>_FILE`` or the configured file; None if neither."""
    if value := env.get(variable, "").strip():
        return Secret(value)
    path_text = env.get(f"{variable}_FILE")
    path = Path(path_text) if path_text else file_key
    if path is None:
        return None
    where = f"{variable}_FILE" if path_text else key
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(where, f"cannot read the token file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(where, "the token file is not UTF-8 text") from None
    if not text:
        raise ConfigError(where, "the token file is empty")
    return Secret(text)


def _is_loopback(host: str) -> bool:
    """Only literal loopback addresses and ``localhost``: a name such as ``127.x.example`` may
    resolve anywhere."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
