"""Settings read from the environment (SPEC §2).

Nothing happens at import: call :func:`get_settings` where a setting is needed. Every variable is
optional; values are validated and a bad one raises :class:`~surgflow.errors.ConfigError` naming
the variable.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from surgflow.errors import ConfigError, describe_validation, dotted

# the databases an Optuna study store runs on (SQLAlchemy dialect names)
_STUDY_DATABASES = ("sqlite", "postgresql", "mysql")


class Settings(BaseSettings):
    """surgflow's settings; each field is read from ``SURGFLOW_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="SURGFLOW_", extra="ignore")

    home: Path = Field(default=Path(".surgflow"), description="root of all local state")
    kafka_bootstrap: str | None = Field(
        default=None, description="host:port,...; unset starts an embedded broker on loopback"
    )
    topic_prefix: str = Field(default="surgflow.", description="prefix of every topic name")
    dask_address: str | None = Field(default=None, description="scheduler of a Dask cluster")
    video_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="directories (:-separated) under which a video uri may point",
    )
    topic_partitions: int = Field(default=3, ge=1, le=1024)
    feedback_confidence_threshold: float = Field(default=0.6, ge=0.0, le=1.0)
    kafka_session_timeout_ms: int = Field(default=6000, ge=1000)
    api_token: SecretStr | None = Field(
        default=None, description="bearer token the inference service requires (SURGFLOW_API_TOKEN)"
    )
    serve_max_body_bytes: int = Field(default=65_536, ge=256, description="largest request body")
    serve_max_video_s: float = Field(default=4 * 3600.0, gt=0, description="longest video analysed")
    serve_max_analysis_s: float = Field(default=900.0, gt=0, description="analysis time limit")
    serve_max_concurrent: int = Field(default=4, ge=1, description="analyses run at once")
    serve_poll_s: float = Field(default=2.0, gt=0, description="registry production-pointer poll")
    label_studio_url: str | None = Field(
        default=None, description="an existing Label Studio server; unset: the embedded one")
    label_studio_token: SecretStr | None = Field(
        default=None, description="API token for SURGFLOW_LABEL_STUDIO_URL")
    privacy_screening: Literal["required", "off"] = Field(
        default="required", description="required: a video reaches people only once the "
        "production out-of-body detector screened it, redacted; off: the videos are "
        "de-identified before they reach surgflow, and none is screened or redacted")
    annotation_url: str | None = Field(
        default=None, description="where Label Studio and browsers reach surgflow's annotation "
        "bridge (media, webhooks); unset: the bridge recorded under SURGFLOW_HOME")
    sweep_storage: str | None = Field(
        default=None, description="database URL of the sweeps' Optuna studies (sqlite:///…, "
        "postgresql://…, mysql://…); unset: SQLite at SURGFLOW_HOME/sweeps/optuna.db")

    @field_validator("home", mode="after")
    @classmethod
    def _absolute_home(cls, v: Path) -> Path:
        return v.expanduser().absolute()

    @field_validator("kafka_bootstrap", mode="after")
    @classmethod
    def _check_bootstrap(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        for server in v.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"expected host:port[,host:port...], got {server.strip()!r}")
        return v.strip()

    @field_validator("label_studio_url", "annotation_url", mode="after")
    @classmethod
    def _check_url(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        if not v.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL")
        return v.strip().rstrip("/")

    @field_validator("sweep_storage", mode="after")
    @classmethod
    def _check_storage(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        v = v.strip()
        scheme, sep, rest = v.partition("://")
        if not sep or scheme.split("+")[0] not in _STUDY_DATABASES or not rest:
            raise ValueError(
                "expected a database URL: sqlite:///PATH, postgresql://USER@HOST/DB or "
                "mysql://USER@HOST/DB (a +driver after the name is allowed)")
        if scheme.startswith("sqlite") and not rest.startswith("/"):
            raise ValueError("a SQLite URL names its file after three slashes: sqlite:///PATH")
        return v

    def sweep_storage_url(self) -> str:
        """Where the sweeps' studies live: SURGFLOW_SWEEP_STORAGE, else SQLite under home."""
        return self.sweep_storage or f"sqlite:///{self.home / 'sweeps' / 'optuna.db'}"

    @field_validator("topic_prefix", mode="after")
    @classmethod
    def _check_prefix(cls, v: str) -> str:
        allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        if not set(v) <= allowed:
            raise ValueError(f"topic prefix may use only letters, digits, '.', '_', '-': {v!r}")
        return v

    @field_validator("video_roots", mode="before")
    @classmethod
    def _split_roots(cls, v: object) -> object:
        if isinstance(v, str):
            return [p for p in v.split(":") if p.strip()]
        return v

    def resolved_video_roots(self) -> list[Path]:
        """The directories a video uri may point into, symlinks resolved."""
        roots = self.video_roots or [self.home, Path.cwd()]
        return [Path(r).expanduser().resolve() for r in roots]

    def topic(self, name: str) -> str:
        """Full topic name for one of SPEC §3's topics."""
        return f"{self.topic_prefix}{name}"


def get_settings(**overrides: object) -> Settings:
    """Read settings from the environment; raise ConfigError naming the bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as e:
        why = describe_validation(e, lambda loc: f"SURGFLOW_{(dotted(loc) or '?').upper()}")
        raise ConfigError(f"invalid configuration: {why}") from e


def env_for_subprocesses(settings: Settings) -> dict[str, str]:
    """Environment that carries these settings to child processes (Dask workers, brokers)."""
    env = dict(os.environ)
    env["SURGFLOW_HOME"] = str(settings.home)
    env["SURGFLOW_TOPIC_PREFIX"] = settings.topic_prefix
    if settings.kafka_bootstrap:
        env["SURGFLOW_KAFKA_BOOTSTRAP"] = settings.kafka_bootstrap
    if settings.dask_address:
        env["SURGFLOW_DASK_ADDRESS"] = settings.dask_address
    return env
