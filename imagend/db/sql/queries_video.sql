-- Video rows' statements (queue/videos.py, db/videos.py; docs/video.md). Guarded as every other write:
-- by status, owner and attempt.

-- name: videos_row
-- A claimed video row's own columns (the claim returns the image columns only).
SELECT id, prompt, scenes::text AS scenes, video_preset, aspect, octet_length(background_audio) AS background_audio_chars,
       negative_prompt, style, model, loras::text AS loras, seed, width, height, steps, guidance, scheduler,
       backend, priority, max_attempts, cost, phase
FROM images
WHERE id = %(id)s;

-- name: videos_background_audio
SELECT background_audio FROM images WHERE id = %(id)s;

-- name: videos_set_scenes
-- The storyboard a script endpoint wrote, kept in the row before anything else is done.
UPDATE images SET scenes = %(scenes)s::jsonb, phase = 'script'
WHERE id = %(id)s AND status = 'Generate' AND locked_by = %(owner)s AND attempts = %(attempt)s
RETURNING id;

-- name: videos_expand
-- One statement: the video is parked (back to ReadyToGenerate, its attempt not counted, due only when its
-- last scene ends: schema_video.sql) and a row per scene inserted, with the video's image settings.
WITH parked AS (
    UPDATE images
    SET status      = 'ReadyToGenerate',
        attempts    = greatest(attempts - 1, 0),
        run_after   = now() + interval '10 years',
        phase       = 'scenes',
        progress    = 0,
        cost        = %(cost)s,
        video_seconds = %(seconds)s,
        locked_by   = NULL,
        lease_until = NULL
    WHERE id = %(id)s AND status = 'Generate' AND locked_by = %(owner)s AND attempts = %(attempt)s
    RETURNING id, backend, negative_prompt, style, model, loras, seed, steps, guidance, scheduler, priority,
              max_attempts, owner
)
-- A scene is its video's owner's row too (docs/owners.md: its plan's cap, fair share, cost and usage apply).
INSERT INTO images (prompt, parent_id, scene_index, negative_prompt, style, model, loras, seed, steps, guidance,
                    scheduler, width, height, backend, priority, max_attempts, format, owner)
SELECT s.prompt, p.id, s.n::int, p.negative_prompt, p.style, p.model, p.loras,
       CASE WHEN p.seed IS NOT NULL THEN mod(p.seed + s.n - 1, 9223372036854775807) END,
       p.steps, p.guidance, p.scheduler, %(width)s, %(height)s, p.backend, p.priority, p.max_attempts, 'png',
       p.owner
FROM parked AS p, unnest(%(prompts)b::text[]) WITH ORDINALITY AS s(prompt, n)
ORDER BY s.n
RETURNING id;

-- name: videos_scenes
-- A video's scene rows in order, with where each keeps its image.
SELECT id, scene_index, status, error, base64, output_path, output_url
FROM images
WHERE parent_id = %(id)s
ORDER BY scene_index, id;

-- name: videos_park
-- A video claimed while scenes of it still run (a producer put one back): parked again until they end.
UPDATE images
SET status = 'ReadyToGenerate', attempts = greatest(attempts - 1, 0), run_after = now() + interval '10 years',
    phase = 'scenes', locked_by = NULL, lease_until = NULL
WHERE id = %(id)s AND status = 'Generate' AND locked_by = %(owner)s AND attempts = %(attempt)s
RETURNING id;

-- name: videos_set_phase
-- The phase a composing video is in, with its lease renewed; returns cancel_requested (NULL: not ours).
UPDATE images
SET phase = %(phase)s, progress = COALESCE(%(progress)s, progress),
    lease_until = now() + make_interval(secs => %(lease_seconds)s)
WHERE id = %(id)s AND status = 'Generate' AND locked_by = %(owner)s AND attempts = %(attempt)s
RETURNING cancel_requested;

-- name: videos_mark_done
-- The MP4 and its poster are in storage: the row ends ReadyToPublish with their URLs (or Failed
-- 'cancelled' if a producer cancelled meanwhile: the caller then deletes them). No video in the row.
UPDATE images
SET status             = CASE WHEN cancel_requested THEN 'Failed' ELSE 'ReadyToPublish' END,
    error              = CASE WHEN cancel_requested THEN 'cancelled' END,
    output_url         = CASE WHEN cancel_requested THEN NULL ELSE %(output_url)s END,
    output_path        = CASE WHEN cancel_requested THEN NULL ELSE %(output_path)s END,
    thumbnail_url      = CASE WHEN cancel_requested THEN NULL ELSE %(thumbnail_url)s END,
    format             = 'mp4',
    base64             = NULL,
    phase              = CASE WHEN cancel_requested THEN phase ELSE 'done' END,
    progress           = CASE WHEN cancel_requested THEN NULL ELSE 1 END,
    video_seconds      = %(seconds)s,
    cost               = %(cost)s,
    width              = %(width)s,
    height             = %(height)s,
    warning            = COALESCE(%(warning)s, warning),
    generation_seconds = %(generation_seconds)s,
    finished_at        = now(),
    locked_by          = NULL,
    lease_until        = NULL
WHERE id = %(id)s AND status = 'Generate' AND locked_by = %(owner)s AND attempts = %(attempt)s
RETURNING status;

-- name: videos_api_get
-- A video row as the listener's /v1/videos routes describe it (http/videos.py).
SELECT id, task, status, phase, progress, error, created_at, finished_at, video_seconds, width, height,
       video_preset, aspect, output_url, output_path, thumbnail_url, cost, scenes::text AS scenes,
       (SELECT count(*) FROM images AS s WHERE s.parent_id = i.id) AS scene_rows,
       (SELECT count(*) FROM images AS s WHERE s.parent_id = i.id AND s.status = 'ReadyToPublish') AS scenes_done
FROM images AS i
WHERE id = %(id)s;

-- name: videos_scene_list
-- A video's scenes as the dashboard lists them (no images).
SELECT id, scene_index, status, error, progress
FROM images
WHERE parent_id = %(id)s
ORDER BY scene_index, id;

-- name: videos_plan_limits
-- The video limits of the plan of a video row's owner (schema_owners.sql's imagend_plan_of); no row for an
-- anonymous row or an owner with no plan.
SELECT p.name AS plan, p.max_video_seconds, p.max_video_preset
FROM images AS i, imagend_plan_of(i.owner) AS p
WHERE i.id = %(id)s AND i.owner IS NOT NULL AND p.name IS NOT NULL;
