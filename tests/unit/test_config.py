"""Settings from the environment: the Go service's names verbatim, Go durations, errors that name
the variable, where the database is, and secrets that never print."""

from __future__ import annotations

from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from imagend.config.database_url import hide_password
from imagend.config.env import Secret
from imagend.config.settings import load_settings
from imagend.errors import ConfigError


def settings(**env: str):
    return load_settings(environ=env, env_file=None)


def test_defaults_are_the_ancestors():
    s = settings()
    assert (s.default_width, s.default_height) == (1024, 1024)
    assert s.default_max_attempts == 3
    assert s.generator_interval_seconds == 300.0  # the Go service: generator every 5 minutes
    assert s.processor_interval_seconds == 600.0  # processor every 10 minutes
    assert s.default_backend == "local"  # the placeholder is never the default
    assert s.database_url is None and s.embedded_database


def test_ancestor_variable_names_work_verbatim():
    s = settings(
        FUSION_BRAIN_API_KEY="fb-api-key-1234",
        FUSION_BRAIN_SECRET_KEY="fb-secret-key-5678",
        DEFAULT_IMAGE_WIDTH="512",
        DEFAULT_IMAGE_HEIGHT="768",
        DEFAULT_NUM_IMAGES="1",
        DEFAULT_STYLE="ANIME",
        DEFAULT_NEGATIVE_PROMPT="blurry",
        DEFAULT_GENERATION_TIMEOUT="5m",
        DEFAULT_CHECK_INTERVAL="500ms",
        DEFAULT_MAX_ATTEMPTS="7",
        DB_MAX_OPEN_CONNS="12",
        DB_MAX_IDLE_CONNS="3",
        DB_CONN_MAX_LIFETIME="1h30m",
    )
    assert s.fusion_brain_api_key == Secret("fb-api-key-1234")
    assert s.fusion_brain_secret_key == Secret("fb-secret-key-5678")
    assert (s.default_width, s.default_height) == (512, 768)
    assert s.default_style == "ANIME"
    assert s.default_negative_prompt == "blurry"
    assert s.generation_timeout_seconds == 300.0
    assert s.check_interval_seconds == pytest.approx(0.5)
    assert s.default_max_attempts == 7
    assert (s.db_pool_max, s.db_pool_min) == (12, 3)
    assert s.db_conn_max_lifetime_seconds == 5400.0
    # Both Fusion Brain keys present: that backend is served too.
    assert "fusionbrain" in s.served_backends


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("300", 300.0), ("0.5", 0.5), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("1h30m", 5400.0),
     ("1m30s", 90.0), ("250ms", 0.25), ("1.5h", 5400.0)],
)
def test_durations_accept_seconds_and_go_durations(raw, seconds):
    assert settings(IMAGEND_GENERATOR_INTERVAL=raw).generator_interval_seconds == pytest.approx(seconds)


def test_go_durations_work_for_ancestor_and_new_names_alike():
    s = settings(IMAGEND_LEASE_SECONDS="2m", DEFAULT_GENERATION_TIMEOUT="1h", IMAGEND_DRAIN_SECONDS="45s")
    assert (s.lease_seconds, s.generation_timeout_seconds, s.drain_seconds) == (120.0, 3600.0, 45.0)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("IMAGEND_LEASE_SECONDS", "abc"),
        ("IMAGEND_LEASE_SECONDS", "5 minutes"),
        ("IMAGEND_LEASE_SECONDS", "0.2"),  # below the one-second minimum
        ("DEFAULT_GENERATION_TIMEOUT", "5x"),
        ("DEFAULT_CHECK_INTERVAL", "-1s"),
        ("DB_CONN_MAX_LIFETIME", "forever"),
        ("DEFAULT_IMAGE_WIDTH", "wide"),
        ("DEFAULT_IMAGE_HEIGHT", "0"),
        ("DEFAULT_MAX_ATTEMPTS", "0"),
        ("DEFAULT_NUM_IMAGES", "4"),
        ("DB_MAX_OPEN_CONNS", "1"),
        ("DB_PORT", "not-a-port"),
        ("DB_SSL_MODE", "bogus"),
        ("IMAGEND_BACKEND", "dalle"),
        ("IMAGEND_BACKENDS", "placeholder,dalle"),
        ("IMAGEND_MAX_BATCH", "1000"),
        ("IMAGEND_PLACEHOLDER_DELAY", "soon"),
        ("IMAGEND_GENERATOR_INTERVAL", "0"),
    ],
)
def test_a_bad_value_raises_config_error_naming_the_variable(name, value):
    env = {name: value}
    if name.startswith("DB_"):
        env["DB_HOST"] = "db.example"
    with pytest.raises(ConfigError) as caught:
        settings(**env)
    assert name in str(caught.value)
    assert value in str(caught.value) or name in ("DEFAULT_IMAGE_HEIGHT", "DEFAULT_MAX_ATTEMPTS", "DB_MAX_OPEN_CONNS")


def test_database_url_wins_over_db_variables():
    s = settings(DATABASE_URL="postgresql://app:pw@primary.example/images", DB_HOST="other.example", DB_NAME="x")
    assert s.database_url is not None
    assert s.database_url.reveal() == "postgresql://app:pw@primary.example/images"
    assert not s.embedded_database


def test_db_variables_build_a_connection_string():
    s = settings(DB_HOST="db.example", DB_PORT="5433", DB_USER="imagend", DB_PASSWORD="p@ss word",
                 DB_NAME="images", DB_SSL_MODE="require")
    assert s.database_url is not None
    params = conninfo_to_dict(s.database_url.reveal())
    assert params == {"host": "db.example", "port": "5433", "user": "imagend", "password": "p@ss word",
                      "dbname": "images", "sslmode": "require"}


def test_no_database_configured_means_the_embedded_postgres(tmp_path):
    s = settings(DB_USER="only-a-user", IMAGEND_DATA_DIR=str(tmp_path / "data"))
    assert s.database_url is None and s.embedded_database
    assert s.data_dir == tmp_path / "data"


def test_secrets_never_print():
    s = settings(FUSION_BRAIN_API_KEY="fb-api-key-1234", FUSION_BRAIN_SECRET_KEY="fb-secret-key-5678",
                 DB_HOST="db.example", DB_PASSWORD="hunter2-db-password")
    text = repr(s) + str(s)
    for secret in ("fb-api-key-1234", "fb-secret-key-5678", "hunter2-db-password"):
        assert secret not in text
        assert secret in s.secrets()  # ...but the log redactor gets every one of them
    assert "Secret('***')" in text
    assert repr(Secret("x-very-secret")) == "Secret('***')" == str(Secret("x-very-secret"))


def test_env_file_is_read_and_the_environment_wins(tmp_path: Path):
    env_file = tmp_path / ".env"
    env_file.write_text("DEFAULT_IMAGE_WIDTH=640\nDEFAULT_IMAGE_HEIGHT=480\nIMAGEND_BACKEND=placeholder\n")
    s = load_settings(environ={"DEFAULT_IMAGE_HEIGHT": "360"}, env_file=env_file)
    assert (s.default_width, s.default_height) == (640, 360)
    assert s.default_backend == "placeholder"


def test_bad_value_in_env_file_names_the_variable(tmp_path: Path):
    env_file = tmp_path / ".env"
    env_file.write_text("IMAGEND_LEASE_SECONDS=abc\n")
    with pytest.raises(ConfigError, match="IMAGEND_LEASE_SECONDS"):
        load_settings(environ={}, env_file=env_file)


@pytest.mark.parametrize(
    "conninfo",
    [
        "postgresql://app:Hunter2-db-Secret@db.example/images",
        "postgresql://app:Hunter2-db-Secret@[::1:5432/images",
        "postgresql://app@db.example/images?password=Hunter2-db-Secret&sslmode=require",
        "host=db.example password=Hunter2-db-Secret dbname=images",
        "host=db.example password='Hunter2-db-Secret' dbname=images",
    ],
)
def test_hide_password_finds_the_password_even_in_a_string_libpq_refuses(conninfo):
    message = f'libpq quoted it: "{conninfo}"'
    hidden = hide_password(message, conninfo)
    assert "Hunter2-db-Secret" not in hidden and "***" in hidden


# -- storage, thumbnails, retention (issue 11) -------------------------------------------------


def storage_settings(**env):
    return load_settings(environ={"IMAGEND_BACKEND": "placeholder", **env}, env_file=None)


def test_storage_targets():
    assert storage_settings().storage is None
    s3 = storage_settings(IMAGEND_STORAGE_URL="s3://my-bucket/a/b/", IMAGEND_S3_ENDPOINT_URL="http://minio:9000").storage
    assert (s3.scheme, s3.bucket, s3.prefix, s3.endpoint_url) == ("s3", "my-bucket", "a/b", "http://minio:9000")
    assert s3.key("1.png") == "a/b/1.png"
    folder = storage_settings(IMAGEND_STORAGE_URL="file:///srv/images").storage
    assert (folder.scheme, str(folder.folder), folder.setting) == ("file", "/srv/images", "IMAGEND_STORAGE_URL")
    legacy = storage_settings(IMAGEND_OUTPUT_DIR="/srv/out").storage
    assert (legacy.scheme, str(legacy.folder), legacy.setting) == ("file", "/srv/out", "IMAGEND_OUTPUT_DIR")


@pytest.mark.parametrize(("env", "message"), [
    ({"IMAGEND_STORAGE_URL": "ftp://x/y"}, "IMAGEND_STORAGE_URL='ftp://x/y': use file:///folder or s3://bucket/prefix"),
    ({"IMAGEND_STORAGE_URL": "s3://A_B/p"}, "'A_B' is not an S3 bucket name"),
    ({"IMAGEND_STORAGE_URL": "s3://key:secret@bucket/p"}, "IMAGEND_STORAGE_URL: write s3://bucket/prefix only;"),
    ({"IMAGEND_STORAGE_URL": "file://relative/path"}, "a file URL names an absolute folder"),
    ({"IMAGEND_STORAGE_URL": "file:///a", "IMAGEND_OUTPUT_DIR": "/b"}, "IMAGEND_OUTPUT_DIR are both set"),
    ({"IMAGEND_STORE_BASE64": "false"}, "IMAGEND_STORE_BASE64=false needs IMAGEND_STORAGE_URL"),
    ({"IMAGEND_THUMBNAIL": "8"}, "IMAGEND_THUMBNAIL=8 is below 16 pixels"),
    ({"IMAGEND_THUMBNAIL": "-1"}, "IMAGEND_THUMBNAIL=-1 is below the minimum 0"),
    ({"IMAGEND_RETENTION_DONE": "1y"}, "IMAGEND_RETENTION_DONE='1y' is not an age"),
    ({"IMAGEND_RETENTION_FAILED": "-1h"}, "IMAGEND_RETENTION_FAILED='-1h' is negative"),
    ({"IMAGEND_RETENTION_BASE64": "1d"}, "IMAGEND_RETENTION_BASE64 needs IMAGEND_STORAGE_URL"),
])
def test_bad_storage_settings_name_the_variable(env, message):
    with pytest.raises(ConfigError) as caught:
        storage_settings(**env)
    assert message in str(caught.value)


def test_retention_ages_take_days_and_go_durations():
    settings = storage_settings(IMAGEND_RETENTION_FAILED="24h", IMAGEND_RETENTION_DONE="30d",
                                IMAGEND_RETENTION_BASE64="1d12h", IMAGEND_STORAGE_URL="file:///srv/i")
    policy = settings.retention
    assert (policy.failed_seconds, policy.done_seconds, policy.base64_seconds) == (86400, 30 * 86400, 129600)
    assert policy.enabled and not policy.delete_objects
    assert not storage_settings(IMAGEND_RETENTION_DONE="0").retention.enabled


def test_aws_secrets_are_redacted_but_never_required():
    settings = storage_settings(AWS_SECRET_ACCESS_KEY="very-secret-key", AWS_ACCESS_KEY_ID="AKIDEXAMPLE")
    assert "very-secret-key" in settings.secrets()
    assert "AKIDEXAMPLE" not in settings.secrets()


def test_only_fusion_brain_configured_makes_it_the_default_backend():
    """The Go service's .env (its keys, no IMAGEND_*) starts on Fusion Brain; a local model named, or
    IMAGEND_BACKEND, keeps the local default (issue 25, item 1)."""
    keys = {"FUSION_BRAIN_API_KEY": "fb-api-key-1234", "FUSION_BRAIN_SECRET_KEY": "fb-secret-key-5678"}
    s = settings(**keys)
    assert s.default_backend == "fusionbrain" and "local" not in s.served_backends
    assert settings(**keys, IMAGEND_MODEL="/srv/models/sdxl").default_backend == "local"
    assert settings(**keys, IMAGEND_MODELS="a=/srv/a").default_backend == "local"
    assert settings(**keys, IMAGEND_BACKEND="local").default_backend == "local"
    assert settings().default_backend == "local"


@pytest.mark.parametrize(
    ("name", "value"),
    [("IMAGEND_LEASE_SECONDS", "30 # half a minute"), ("IMAGEND_BACKEND", "fusionbrain # the Go one"),
     ("DEFAULT_IMAGE_WIDTH", "512 # small"), ("IMAGEND_STORE_BASE64", "false # S3 only")],
)
def test_an_inline_comment_is_named_in_the_error(name, value):
    with pytest.raises(ConfigError, match="inline comment, which systemd's EnvironmentFile keeps") as error:
        settings(**{name: value})
    assert str(error.value).startswith(name)


def test_default_style_is_checked_at_start():
    assert settings(DEFAULT_STYLE="anime").default_style == "anime"
    with pytest.raises(ConfigError, match="DEFAULT_STYLE='ANIME # the look we liked' holds an inline comment"):
        settings(DEFAULT_STYLE="ANIME # the look we liked")
    with pytest.raises(ConfigError, match="is not a style this daemon's backends know"):
        settings(DEFAULT_STYLE="ANIMEE", IMAGEND_BACKEND="placeholder")
    # Fusion Brain's API may publish more styles than imagend's own: left to it.
    fb = settings(DEFAULT_STYLE="PIXEL", FUSION_BRAIN_API_KEY="k" * 16, FUSION_BRAIN_SECRET_KEY="s" * 16)
    assert fb.default_style == "PIXEL"


def test_the_style_names_config_checks_are_the_columns():
    from imagend.config import settings as config_settings
    from imagend.db.columns import STYLE_NAMES

    assert config_settings.STYLE_NAMES == STYLE_NAMES
