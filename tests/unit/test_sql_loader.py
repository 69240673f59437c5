"""The SQL loader: queries.sql parsed once into {name: statement}, names noun-first."""

from __future__ import annotations

import inspect
import re

from imagend.db import operations as operations_repository
from imagend.db import repository
from imagend.db.sql import queries, schema

EXPECTED = {
    "images_claim_batch", "images_mark_done", "images_fail_attempt", "images_release", "images_extend_lease",
    "images_begin_work", "images_set_warning", "images_source_images", "images_set_previews", "images_rescue",
    "images_claim_polls", "images_mark_submitted", "images_wake_chained",
    "images_poll_later", "images_next_wakeups", "images_queue_status", "daemons_heartbeat", "daemons_remove",
    "listen_probe", "images_unserved", "images_expire", "images_drop_inline", "images_retention_index_finished",
    "images_retention_index_inline", "images_invalid_indexes", "images_export_batch", "images_export_mark",
    "images_fold_queue_counts", "images_fail_batch", "images_input_image", "images_spooled_batch", "images_spool_mark",
    "images_api_cancel", "images_api_insert", "images_api_progress", "images_api_refused",
    "images_api_request_find", "images_api_request_record", "images_api_requests_expire", "images_api_results",
    "images_claimable",
    # queries_operations.sql
    "paused_add", "paused_remove", "paused_list", "images_queue_counts", "images_oldest_waiting", "daemons_list",
    "images_in_flight", "images_recent_done", "images_recent_failed", "images_get", "images_image",
    "images_thumbnail", "images_listed", "images_preview", "images_insert", "images_cancel", "images_retry",
    "images_status_of", "database_ping", "images_waiting", "images_params",
    # queries_webapp.sql
    "uploads_insert", "uploads_stored", "images_events_state", "images_api_request_peek",
    "webhooks_claim", "webhooks_images", "webhooks_delivered", "webhooks_retry_later", "webhooks_give_up",
    "webhooks_next_due", "webhooks_forget",
    # queries_video.sql
    "videos_row", "videos_background_audio", "videos_set_scenes", "videos_expand", "videos_scenes", "videos_park",
    "videos_set_phase", "videos_mark_done", "videos_api_get", "videos_scene_list",
    "videos_plan_limits",
    # queries_owners.sql
    "plans_clear_default", "plans_upsert", "plans_delete", "plans_list", "owners_assign", "owners_top", "owners_usage",
    "keys_create", "keys_revoke", "keys_lookup", "images_owner_of", "images_list_owned", "images_delete",
    "images_refused_at_insert", "images_fail_over_budget",
    # queries_presets.sql
    "presets_upsert", "presets_delete", "presets_list", "presets_get", "images_apply_preset",
}


def test_every_named_block_is_loaded():
    assert set(queries()) == EXPECTED


def test_statements_are_whole_and_clean():
    for name, statement in queries().items():
        assert statement, name
        assert not statement.endswith(";"), name
        assert "-- name:" not in statement, name  # a block never swallows the next one
        # One statement per block: no semicolon outside comments.
        code = "\n".join(line.split("--", 1)[0] for line in statement.splitlines())
        assert ";" not in code, name


def test_names_start_with_the_noun():
    nouns = "images|daemons|listen|paused|database|videos|uploads|webhooks|plans|owners|keys|presets"
    assert all(re.fullmatch(rf"({nouns})_[a-z_]+", name) for name in queries())


def test_queries_are_parsed_once():
    assert queries() is queries()


def test_every_query_the_repository_runs_exists():
    source = inspect.getsource(repository) + inspect.getsource(operations_repository)
    used = set(re.findall(r'"((?:images|daemons|listen|paused|database)_[a-z_]+)"', source))
    assert used, "the repositories name their queries"
    assert used <= set(queries())


def test_schema_is_one_transaction_under_an_advisory_lock():
    text = schema()
    assert text.lstrip().splitlines()[0].startswith("--")
    assert "BEGIN;" in text and text.rstrip().endswith("COMMIT;")
    assert "pg_advisory_xact_lock" in text
    assert "CREATE TABLE IF NOT EXISTS images" in text


def test_the_claim_functions_lock_timeout_is_the_statements_one():
    from imagend.db.statements import LOCK_TIMEOUT

    # schema_claim.sql writes it out (db/sql may not import db/statements): the two say the same.
    assert f"SET lock_timeout = '{LOCK_TIMEOUT}'" in schema()
