"""Settings: one frozen object, built once in main() from the environment and `.env`.

The Go service's variable names work verbatim; new settings are `IMAGEND_*`. Every
error names the variable. Backend-specific settings are read by each backend with
the same `Env` reader when the daemon starts, so a bad value still stops the start.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import dotenv_values

from imagend.config.backends import BACKEND_NAMES
from imagend.config.database_url import SSL_MODES, check_conninfo
from imagend.config.env import INLINE_COMMENT, Env, Secret
from imagend.errors import ConfigError
from imagend.retry import BACKOFF_BASE_SECONDS
from imagend.storage.target import StorageTarget, parse_storage_target

# imagend's style names: db/columns.py's STYLE_NAMES, which config may not import (db imports config);
# tests/unit/test_config.py holds the two equal. Fusion Brain's API may publish more.
STYLE_NAMES = ("DEFAULT", "KANDINSKY", "UHD", "ANIME")
STYLE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")

# Ancestor defaults (the Go service), then imagend's own.
DEFAULT_IMAGE_SIDE_PX = 1024
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_GENERATION_TIMEOUT_SECONDS = 300.0
DEFAULT_CHECK_INTERVAL_SECONDS = 2.0
GENERATOR_INTERVAL_SECONDS = 300.0
PROCESSOR_INTERVAL_SECONDS = 600.0
LEASE_SECONDS = 60.0
PREVIEW_SECONDS = 2.0  # step previews (local backend) written at most this often per batch: each is a row write
DEAD_AFTER_SECONDS = 10.0
MAX_CRASHES = 3
POLL_SECONDS = 2.0
LISTEN_CHECK_SECONDS = 30.0
DRAIN_SECONDS = 30.0

# Plain seconds: decimal digits only (no exponent, inf, nan or underscores, which float() takes).
def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "imagend"


# Retention looks again this long after a pass that finished its work (or after half its shortest age),
# and an idle daemon's processor runs at least this often while retention is on, so the ages hold.
RETENTION_LOOK_AGAIN_SECONDS = 60.0

# The longest side of a thumbnail, in pixels; smaller than a list page's tiles would need is pointless.
THUMBNAIL_MIN_PX = 16
THUMBNAIL_MAX_PX = 2048


@dataclass(frozen=True)
class RetentionSettings:
    """IMAGEND_RETENTION_*: ages (seconds after finished_at) past which terminal rows go; None: kept."""

    failed_seconds: float | None = None
    done_seconds: float | None = None
    base64_seconds: float | None = None
    delete_objects: bool = False

    @property
    def enabled(self) -> bool:
        return any(age is not None for age in (self.failed_seconds, self.done_seconds, self.base64_seconds))

    @property
    def look_again_seconds(self) -> float:
        """How long retention waits after a pass that finished its work: RETENTION_LOOK_AGAIN_SECONDS, or
        half the shortest age if that is shorter (a row then outlives its age by at most half of it)."""
        ages = [age for age in (self.failed_seconds, self.done_seconds, self.base64_seconds) if age]
        return min([RETENTION_LOOK_AGAIN_SECONDS, *(age / 2 for age in ages)])


@dataclass(frozen=True)
class HttpSettings:
    """IMAGEND_HTTP (host:port of the listener: metrics, probes, dashboard, API) and the token
    writes need (IMAGEND_HTTP_TOKEN; without it the listener is read-only)."""

    host: str
    port: int
    token: Secret | None

    @property
    def loopback(self) -> bool:
        return self.host in ("127.0.0.1", "::1", "localhost") or self.host.startswith("127.")


def _http(env: Env) -> HttpSettings | None:
    value = env.str("IMAGEND_HTTP")
    if not value:
        return None
    host, sep, port_text = value.rpartition(":")
    host = host.strip("[]") if sep else "127.0.0.1"
    if not port_text.isdigit() or not 0 < int(port_text) < 65536 or (sep and not host):
        raise ConfigError(f"IMAGEND_HTTP={value!r}: say where to listen as host:port, e.g. 127.0.0.1:9464")
    token = env.secret("IMAGEND_HTTP_TOKEN")
    if token is not None and len(token.reveal()) < 16:
        raise ConfigError("IMAGEND_HTTP_TOKEN is too short: use at least 16 random characters")
    return HttpSettings(host=host, port=int(port_text), token=token)


UPLOAD_MAX_BYTES = 20 * 1024 * 1024  # as images/inputs.py's MAX_INPUT_BYTES: an input the daemon decodes
LINK_SECONDS = 3600.0  # how long a presigned or signed image link works
WEBHOOK_TIMEOUT_SECONDS = 10.0  # one delivery attempt, connect to last byte
WEBHOOK_BACKOFF_SECONDS = 2.0  # the first retry's delay; doubled per attempt up to an hour
WEBHOOK_EXPIRE_SECONDS = 24 * 3600.0  # an event not acknowledged by then is abandoned
WEBHOOK_KEEP_SECONDS = 7 * 24 * 3600.0  # delivered or abandoned events are kept this long (to look at)
SSE_MAX_STREAMS = 1000  # live streams open at once, per listener
SSE_MAX_PER_CLIENT = 16  # per client address
RETRY_WINDOW_SECONDS = 3600.0  # an Idempotency-Key (or an OpenAI SDK retry's) is recognised this long


@dataclass(frozen=True)
class WebAppSettings:
    """What a web app's side of the API reads (issue 23; docs/operations.md): uploads, the links a
    browser opens, webhooks, the live stream."""

    upload_max_bytes: int = UPLOAD_MAX_BYTES
    link_seconds: float = LINK_SECONDS
    public_base_url: str | None = None  # IMAGEND_PUBLIC_BASE_URL: a CDN in front of the bucket or folder
    link_secret: Secret | None = None  # IMAGEND_LINK_SECRET, else derived from IMAGEND_HTTP_TOKEN
    webhook_secret: Secret | None = None  # IMAGEND_WEBHOOK_SECRET (whsec_<base64> or any text)
    webhook_allow_hosts: frozenset[str] = frozenset()  # private / loopback targets allowed; "*": any
    webhook_timeout_seconds: float = WEBHOOK_TIMEOUT_SECONDS
    webhook_backoff_seconds: float = WEBHOOK_BACKOFF_SECONDS
    webhook_expire_seconds: float = WEBHOOK_EXPIRE_SECONDS
    webhook_keep_seconds: float = WEBHOOK_KEEP_SECONDS
    sse_max_streams: int = SSE_MAX_STREAMS
    sse_max_per_client: int = SSE_MAX_PER_CLIENT
    # IMAGEND_HTTP_RETRY_WINDOW (the compatible APIs read it too): how long an Idempotency-Key is kept.
    retry_window_seconds: float = RETRY_WINDOW_SECONDS


def _webapp(env: Env) -> WebAppSettings:
    base = env.str("IMAGEND_PUBLIC_BASE_URL")
    if base is not None and not base.startswith(("https://", "http://")):
        raise ConfigError(f"IMAGEND_PUBLIC_BASE_URL={base!r}: an http(s) URL, e.g. https://cdn.example.com/images")
    hosts = env.str("IMAGEND_WEBHOOK_ALLOW_HOSTS") or ""
    secret = env.secret("IMAGEND_LINK_SECRET")
    if secret is not None and len(secret.reveal()) < 16:
        raise ConfigError("IMAGEND_LINK_SECRET is too short: use at least 16 random characters")
    return WebAppSettings(
        upload_max_bytes=env.int("IMAGEND_UPLOAD_MAX_BYTES", UPLOAD_MAX_BYTES, minimum=1024),
        link_seconds=env.seconds("IMAGEND_LINK_SECONDS", LINK_SECONDS, minimum=1.0),
        public_base_url=base.rstrip("/") if base else None,
        link_secret=secret,
        webhook_secret=env.secret("IMAGEND_WEBHOOK_SECRET"),
        webhook_allow_hosts=frozenset(h.strip().lower().strip("[]") for h in hosts.split(",") if h.strip()),
        webhook_timeout_seconds=env.seconds("IMAGEND_WEBHOOK_TIMEOUT", WEBHOOK_TIMEOUT_SECONDS, minimum=0.1),
        webhook_backoff_seconds=env.seconds("IMAGEND_WEBHOOK_BACKOFF", WEBHOOK_BACKOFF_SECONDS, minimum=0.01),
        webhook_expire_seconds=env.seconds("IMAGEND_WEBHOOK_EXPIRE", WEBHOOK_EXPIRE_SECONDS, minimum=1.0),
        webhook_keep_seconds=env.seconds("IMAGEND_WEBHOOK_KEEP", WEBHOOK_KEEP_SECONDS, minimum=1.0),
        sse_max_streams=env.int("IMAGEND_SSE_MAX_STREAMS", SSE_MAX_STREAMS, minimum=1),
        sse_max_per_client=env.int("IMAGEND_SSE_MAX_PER_CLIENT", SSE_MAX_PER_CLIENT, minimum=1),
        retry_window_seconds=env.seconds("IMAGEND_HTTP_RETRY_WINDOW", RETRY_WINDOW_SECONDS, minimum=1.0),
    )


@dataclass(frozen=True)
class Settings:
    # Database: DATABASE_URL, else the ancestor's DB_*, else the embedded Postgres.
    database_url: Secret | None
    db_pool_max: int
    db_pool_min: int
    db_conn_max_lifetime_seconds: float
    # Where LISTEN goes: straight to Postgres when DATABASE_URL is a transaction pooler.
    listen_url: Secret | None
    data_dir: Path
    # Generation defaults applied where a row has NULL (ancestor names).
    default_width: int
    default_height: int
    default_style: str | None
    default_negative_prompt: str | None
    default_max_attempts: int
    generation_timeout_seconds: float
    check_interval_seconds: float
    # Daemon.
    default_backend: str
    served_backends: tuple[str, ...]
    lease_seconds: float
    preview_seconds: float
    dead_after_seconds: float
    max_crashes: int
    poll_seconds: float
    listen_check_seconds: float
    generator_interval_seconds: float
    processor_interval_seconds: float
    drain_seconds: float
    max_batch: int
    # Where finished images go besides (or instead of) the row's base64 (storage/target.py).
    storage: StorageTarget | None
    store_base64: bool
    thumbnail_px: int  # 0: no thumbnail
    retention: RetentionSettings
    placeholder_delay_seconds: float
    retry_base_seconds: float
    # Fusion Brain credentials (ancestor names); read by the backend, hidden from logs.
    fusion_brain_api_key: Secret | None
    fusion_brain_secret_key: Secret | None
    env: Env = field(repr=False, compare=False)
    http: HttpSettings | None = None
    webapp: WebAppSettings = field(default_factory=WebAppSettings)

    @property
    def embedded_database(self) -> bool:
        return self.database_url is None

    def secrets(self) -> list[str]:
        """Every secret value, for the log redactor."""
        found = [
            s.reveal()
            for s in (self.database_url, self.listen_url, self.fusion_brain_api_key, self.fusion_brain_secret_key,
                      self.http.token if self.http else None, self.webapp.link_secret, self.webapp.webhook_secret)
            if s
        ]
        others = [self.env.str(name) for name in ("DB_PASSWORD", *AWS_SECRET_VARIABLES)]
        return [*found, *(value for value in others if value)]


def load_environment(
    env_file: str | Path | None = ".env", environ: Mapping[str, str] | None = None, env_file_required: bool = False
) -> dict[str, str]:
    """The process environment over the `.env` file (the environment wins, as with Go's godotenv).

    A missing file is skipped unless `env_file_required` (a file named with -env-file)."""
    merged: dict[str, str] = {}
    if env_file is not None and (env_file_required or os.path.lexists(env_file)):
        named = f"-env-file {env_file}" if env_file_required else f"the env file {env_file}"
        if not os.path.exists(env_file):
            raise ConfigError(f"{named}: no such file")
        if os.path.isdir(env_file):
            raise ConfigError(f"{named}: is a directory, not a file")
        try:
            merged.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{named}: cannot be read: {exc}") from None
    merged.update(os.environ if environ is None else environ)
    return merged


# Read by the S3 store from the environment or .env (storage/s3.py); the secret ones are redacted.
AWS_SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def _storage(env: Env) -> tuple[StorageTarget | None, bool, int]:
    """IMAGEND_STORAGE_URL (or IMAGEND_OUTPUT_DIR), IMAGEND_STORE_BASE64, IMAGEND_THUMBNAIL."""
    target = parse_storage_target(
        env.str("IMAGEND_STORAGE_URL"), env.str("IMAGEND_OUTPUT_DIR"), env.str("IMAGEND_S3_ENDPOINT_URL")
    )
    store_base64 = env.bool("IMAGEND_STORE_BASE64", True)
    if not store_base64 and target is None:
        raise ConfigError("IMAGEND_STORE_BASE64=false needs IMAGEND_STORAGE_URL: without base64 and without a "
                          "storage target an image would live nowhere")
    thumbnail = env.int("IMAGEND_THUMBNAIL", 0, minimum=0, maximum=THUMBNAIL_MAX_PX)
    if 0 < thumbnail < THUMBNAIL_MIN_PX:
        raise ConfigError(f"IMAGEND_THUMBNAIL={thumbnail} is below {THUMBNAIL_MIN_PX} pixels (0 turns it off)")
    return target, store_base64, thumbnail


def _retention(env: Env, target: StorageTarget | None) -> RetentionSettings:
    retention = RetentionSettings(
        failed_seconds=env.age("IMAGEND_RETENTION_FAILED"),
        done_seconds=env.age("IMAGEND_RETENTION_DONE"),
        base64_seconds=env.age("IMAGEND_RETENTION_BASE64"),
        delete_objects=env.bool("IMAGEND_RETENTION_DELETE_OBJECTS", False),
    )
    if retention.base64_seconds is not None and target is None:
        raise ConfigError("IMAGEND_RETENTION_BASE64 needs IMAGEND_STORAGE_URL: base64 is only dropped from rows "
                          "whose image is stored there")
    return retention


# libpq's sslmode values; any other fails the first connect without naming the setting.
def _conninfo_setting(env: Env, name: str) -> Secret | None:
    value = env.str(name)
    if value is None:
        return None
    check_conninfo(name, value)
    return Secret(value)


def _database_url(env: Env) -> Secret | None:
    url = _conninfo_setting(env, "DATABASE_URL")
    if url is not None:
        return url
    parts = {
        "host": env.str("DB_HOST"),
        "port": env.str("DB_PORT"),
        "user": env.str("DB_USER"),
        "password": env.str("DB_PASSWORD"),
        "dbname": env.str("DB_NAME"),
        "sslmode": env.str("DB_SSL_MODE"),
    }
    if not (parts["host"] or parts["dbname"]):
        return None
    if parts["port"] is not None:
        env.int("DB_PORT", 5432, minimum=1, maximum=65535)
    if parts["sslmode"] is not None:  # libpq's modes; otherwise the first connect fails without naming it
        parts["sslmode"] = env.choice("DB_SSL_MODE", "prefer", SSL_MODES)
    from psycopg.conninfo import make_conninfo

    return Secret(make_conninfo(**{k: v for k, v in parts.items() if v is not None}))


def _served_backends(env: Env, default_backend: str, has_fusion_keys: bool) -> tuple[str, ...]:
    raw = env.str("IMAGEND_BACKENDS")
    if raw is None:
        served = {default_backend, "placeholder"} | ({"fusionbrain"} if has_fusion_keys else set())
        return tuple(name for name in BACKEND_NAMES if name in served)
    names = tuple(dict.fromkeys(n.strip().lower() for n in raw.split(",") if n.strip()))
    unknown = [n for n in names if n not in BACKEND_NAMES]
    if unknown or not names:
        raise ConfigError(f"IMAGEND_BACKENDS={raw!r}: each name must be one of {', '.join(BACKEND_NAMES)}")
    return names


# What the local backend reads to find its model: set, the host is meant to generate locally.
LOCAL_MODEL_VARIABLES = ("IMAGEND_MODEL", "IMAGEND_MODELS")


def implied_default_backend(env: Env) -> str:
    """IMAGEND_BACKEND's default: `fusionbrain` where only Fusion Brain is configured (the Go service's
    `.env`: its keys, and no local model named), else `local`."""
    fusion_brain = env.str("FUSION_BRAIN_API_KEY") or env.str("FUSION_BRAIN_SECRET_KEY")
    if fusion_brain and not any(env.str(name) for name in LOCAL_MODEL_VARIABLES):
        return "fusionbrain"
    return "local"


def _default_style(env: Env, served: tuple[str, ...]) -> str | None:
    """DEFAULT_STYLE, checked at start: a bad one would fail every row that leaves `style` NULL. Names
    beyond imagend's own are left to Fusion Brain where it is served: its API may publish more."""
    value = env.str("DEFAULT_STYLE")
    if value is None:
        return None
    if INLINE_COMMENT.search(value):
        raise ConfigError(
            f"DEFAULT_STYLE={value!r} holds an inline comment: systemd's EnvironmentFile (unlike the Go service's "
            "godotenv) keeps everything after '=' in the value. Put the comment on a line of its own"
        )
    if not STYLE_NAME.fullmatch(value):
        raise ConfigError(f"DEFAULT_STYLE={value!r} is not a style name; use one of: {', '.join(STYLE_NAMES)}")
    if value.upper() not in STYLE_NAMES and "fusionbrain" not in served:
        raise ConfigError(
            f"DEFAULT_STYLE={value!r} is not a style this daemon's backends know; use one of: {', '.join(STYLE_NAMES)}"
        )
    return value


def load_settings(
    environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env", env_file_required: bool = False
) -> Settings:
    env = Env(load_environment(env_file, environ, env_file_required))
    num_images = env.int("DEFAULT_NUM_IMAGES", 1, minimum=1)
    if num_images != 1:
        raise ConfigError(f"DEFAULT_NUM_IMAGES={num_images}: one image per row is all imagend (and Fusion Brain) makes")
    api_key = env.secret("FUSION_BRAIN_API_KEY")
    secret_key = env.secret("FUSION_BRAIN_SECRET_KEY")
    default_backend = env.choice("IMAGEND_BACKEND", implied_default_backend(env), BACKEND_NAMES)
    served = _served_backends(env, default_backend, api_key is not None and secret_key is not None)
    storage, store_base64, thumbnail_px = _storage(env)
    retention = _retention(env, storage)
    processor_interval = env.seconds("IMAGEND_PROCESSOR_INTERVAL", PROCESSOR_INTERVAL_SECONDS, minimum=0.1)
    if retention.enabled:  # retention runs in processor passes: an idle daemon's come at this interval
        processor_interval = min(processor_interval, retention.look_again_seconds)
    pool_max = env.int("DB_MAX_OPEN_CONNS", 10, minimum=2)
    return Settings(
        database_url=_database_url(env),
        db_pool_max=pool_max,
        db_pool_min=min(env.int("DB_MAX_IDLE_CONNS", 1, minimum=1), pool_max),  # kept at rest
        db_conn_max_lifetime_seconds=env.seconds("DB_CONN_MAX_LIFETIME", 3600.0, minimum=1.0),
        listen_url=_conninfo_setting(env, "IMAGEND_LISTEN_URL"),
        data_dir=Path(env.str("IMAGEND_DATA_DIR") or default_data_dir()).expanduser(),
        default_width=env.int("DEFAULT_IMAGE_WIDTH", DEFAULT_IMAGE_SIDE_PX, minimum=1),
        default_height=env.int("DEFAULT_IMAGE_HEIGHT", DEFAULT_IMAGE_SIDE_PX, minimum=1),
        default_style=_default_style(env, served),
        default_negative_prompt=env.str("DEFAULT_NEGATIVE_PROMPT"),
        default_max_attempts=env.int("DEFAULT_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS, minimum=1),
        generation_timeout_seconds=env.seconds(
            "DEFAULT_GENERATION_TIMEOUT", DEFAULT_GENERATION_TIMEOUT_SECONDS, minimum=1.0
        ),
        check_interval_seconds=env.seconds("DEFAULT_CHECK_INTERVAL", DEFAULT_CHECK_INTERVAL_SECONDS, minimum=0.05),
        default_backend=default_backend,
        served_backends=served,
        lease_seconds=env.seconds("IMAGEND_LEASE_SECONDS", LEASE_SECONDS, minimum=1.0),
        preview_seconds=env.seconds("IMAGEND_PREVIEW_SECONDS", PREVIEW_SECONDS, minimum=0.1),
        # The liveness thread beats every dead_after/10 s and a peer is "alive" within 3 beats:
        # below 1 s that is too tight for a busy 2-core host.
        dead_after_seconds=env.seconds("IMAGEND_DEAD_AFTER", DEAD_AFTER_SECONDS, minimum=1.0),
        max_crashes=env.int("IMAGEND_MAX_CRASHES", MAX_CRASHES, minimum=1),
        poll_seconds=env.seconds("IMAGEND_POLL_SECONDS", POLL_SECONDS, minimum=0.05),
        listen_check_seconds=env.seconds("IMAGEND_LISTEN_CHECK", LISTEN_CHECK_SECONDS, minimum=0.5),
        generator_interval_seconds=env.seconds("IMAGEND_GENERATOR_INTERVAL", GENERATOR_INTERVAL_SECONDS, minimum=0.1),
        processor_interval_seconds=processor_interval,
        drain_seconds=env.seconds("IMAGEND_DRAIN_SECONDS", DRAIN_SECONDS),
        max_batch=env.int("IMAGEND_MAX_BATCH", 1, minimum=1, maximum=64),
        storage=storage,
        store_base64=store_base64,
        thumbnail_px=thumbnail_px,
        retention=retention,
        placeholder_delay_seconds=env.seconds("IMAGEND_PLACEHOLDER_DELAY", 0.0),
        retry_base_seconds=env.seconds("IMAGEND_RETRY_BACKOFF", BACKOFF_BASE_SECONDS),
        fusion_brain_api_key=api_key,
        fusion_brain_secret_key=secret_key,
        env=env,
        http=_http(env),
        webapp=_webapp(env),
    )
