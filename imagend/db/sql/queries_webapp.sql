-- What a web app needs besides the producer's statements (issue 23; docs/operations.md): uploads,
-- the webhook outbox, the live stream's reads.

-- name: uploads_insert
-- An uploaded image is a finished row of its own (task 'upload', never claimed: it is born
-- ReadyToPublish), so every place that takes a row id as an input (init_image_id, reference_image_id)
-- takes an upload's id, GET /v1/images/{id}/image serves it, and retention removes it like any image.
-- base64: the image when no store holds it (else NULL, and output_url is set by uploads_stored).
-- owner: the uploader's (an owner's key), so only it (and the operator) reads it.
INSERT INTO images (prompt, status, task, format, width, height, params, base64, owner, started_at, finished_at,
                    generation_seconds, progress)
VALUES ('(uploaded image)', 'ReadyToPublish', 'upload', %(format)s, %(width)s, %(height)s, %(params)s,
        %(base64)s, %(owner)s, now(), now(), 0, 1)
RETURNING id;

-- name: uploads_stored
UPDATE images SET output_url = %(url)s WHERE id = %(id)s AND task = 'upload';

-- name: images_events_state
-- The live stream (GET /v1/images/{id}/events): each watched row's state, one read for every stream
-- of a listener. preview_tag changes when a new preview is written (its length and the time it was).
SELECT id, status, progress, error, warning, attempts, cancel_requested, output_url, thumbnail_url,
       base64 IS NOT NULL OR output_url IS NOT NULL AS has_image,
       md5(left(preview, 64) || octet_length(preview)::text) AS preview_tag
FROM images
WHERE id = ANY (%(ids)s);

-- name: webhooks_claim
-- Due events, each taken by one daemon (SKIP LOCKED), their next_at pushed past the delivery's bound:
-- a daemon killed mid-delivery leaves its events to be claimed again then (same event_id).
WITH due AS (
    SELECT id FROM imagend_webhooks
    WHERE delivered_at IS NULL AND gave_up_at IS NULL AND next_at <= now()
    ORDER BY next_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE imagend_webhooks AS w
SET next_at = now() + make_interval(secs => %(lease)s), attempts = w.attempts + 1
FROM due
WHERE w.id = due.id
RETURNING w.id, w.event_id, w.image_id, w.url, w.status, w.attempts, w.created_at,
          extract(epoch FROM now() - w.created_at)::float8 AS age_seconds;

-- name: webhooks_images
-- What an event says of its rows (never the image bytes: links to them).
SELECT id, status, error, warning, prompt, seed, width, height, format, output_url, thumbnail_url,
       base64 IS NOT NULL AS has_base64, thumbnail IS NOT NULL AS has_thumbnail, params::text AS params,
       created_at, started_at, finished_at, generation_seconds
FROM images
WHERE id = ANY (%(ids)s);

-- name: webhooks_delivered
UPDATE imagend_webhooks SET delivered_at = now(), last_error = NULL
WHERE id = %(id)s AND delivered_at IS NULL;

-- name: webhooks_retry_later
UPDATE imagend_webhooks SET next_at = now() + make_interval(secs => %(delay)s), last_error = %(error)s
WHERE id = %(id)s AND delivered_at IS NULL;

-- name: webhooks_give_up
UPDATE imagend_webhooks SET gave_up_at = now(), last_error = %(error)s
WHERE id = %(id)s AND delivered_at IS NULL;

-- name: webhooks_next_due
-- Seconds until the next event falls due (NULL: none waits), on the due index.
SELECT extract(epoch FROM min(next_at) - now())::float8
FROM imagend_webhooks WHERE delivered_at IS NULL AND gave_up_at IS NULL;

-- name: webhooks_forget
-- Delivered or abandoned events older than the keep window, a bounded number at a time.
DELETE FROM imagend_webhooks
WHERE id IN (SELECT id FROM imagend_webhooks
             WHERE created_at < now() - make_interval(secs => %(keep)s)
               AND (delivered_at IS NOT NULL OR gave_up_at IS NOT NULL)
             LIMIT 1000);

-- name: images_api_request_peek
-- A key's rows and body hash within the window, without taking the key (a multipart POST /v1/images
-- looks before it stores its inline images).
SELECT image_ids, body_hash FROM imagend_api_requests
WHERE key = %(key)s AND created_at > now() - make_interval(secs => %(window)s);
