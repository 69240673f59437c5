-- Video rows (docs/video.md; queue/videos.py). A row with task = 'video' holds a storyboard (`scenes`);
-- its first claim checks it and inserts one ordinary image row per scene (parent_id, scene_index), then
-- parks the video: back to ReadyToGenerate with run_after far ahead, so no claim takes it and no daemon
-- looks at it while its scenes are made, anywhere in the fleet. The scene that ends last (or the first that
-- fails) brings it due and wakes a daemon, which composes it. The claim itself is unchanged.
BEGIN;

SELECT pg_advisory_xact_lock(hashtext('imagend.schema'));

-- What a producer writes (db/columns.py).
ALTER TABLE images ADD COLUMN IF NOT EXISTS scenes           JSONB;
ALTER TABLE images ADD COLUMN IF NOT EXISTS video_preset     TEXT;
-- background_audio: base64 (MP3, WAV, AAC, Ogg), mixed under the narration.
ALTER TABLE images ADD COLUMN IF NOT EXISTS aspect           TEXT;
ALTER TABLE images ADD COLUMN IF NOT EXISTS background_audio TEXT;
-- What the daemon writes: a scene row's video and place in it; a video's phase (scenes, narration, render,
-- upload, done), length in seconds and cost (duration x base per second x the preset's multiplier).
ALTER TABLE images ADD COLUMN IF NOT EXISTS parent_id        INTEGER;
ALTER TABLE images ADD COLUMN IF NOT EXISTS scene_index      INTEGER;
ALTER TABLE images ADD COLUMN IF NOT EXISTS phase            TEXT;
ALTER TABLE images ADD COLUMN IF NOT EXISTS video_seconds    DOUBLE PRECISION;
-- cost: shared with the owners' plans (schema_owners.sql), which may add it first.
ALTER TABLE images ADD COLUMN IF NOT EXISTS cost             DOUBLE PRECISION;

-- Plan limits (docs/owners.md's plans, schema_owners.sql): the longest video and the highest preset an owner
-- on the plan may ask for (NULL: no limit). A video row over them fails at its first claim, saying which.
ALTER TABLE imagend_plans ADD COLUMN IF NOT EXISTS max_video_seconds DOUBLE PRECISION;
ALTER TABLE imagend_plans ADD COLUMN IF NOT EXISTS max_video_preset  TEXT;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'imagend_plans_video_limits_ok') THEN
        ALTER TABLE imagend_plans ADD CONSTRAINT imagend_plans_video_limits_ok
            CHECK (max_video_seconds > 0 AND max_video_seconds < 1e9
                   AND max_video_preset IN ('standard', 'hd', 'ultra'));
    END IF;
END $$;

CREATE INDEX IF NOT EXISTS images_parent_idx ON images (parent_id, scene_index) WHERE parent_id IS NOT NULL;

-- A scene that ends: its video's progress (the scenes are its first half), and, when it was the last
-- one or it failed, the video comes due and a daemon is woken. The video is locked first, so two
-- scenes ending at once in two transactions are counted one after the other: the second one's count
-- (a statement of its own, a fresh snapshot in READ COMMITTED) sees the first one ended.
CREATE OR REPLACE FUNCTION imagend_video_scene_ended() RETURNS trigger
LANGUAGE plpgsql SET jit = off AS $$
DECLARE
    video_backend TEXT;
    left_running  BIGINT;
    all_scenes    BIGINT;
BEGIN
    SELECT backend INTO video_backend FROM images
    WHERE id = NEW.parent_id AND status = 'ReadyToGenerate' AND task = 'video'
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT count(*) FILTER (WHERE status IN ('ReadyToGenerate', 'Generate')), count(*)
    INTO left_running, all_scenes
    FROM images WHERE parent_id = NEW.parent_id;
    UPDATE images
    SET progress  = 0.5 * (all_scenes - left_running) / greatest(all_scenes, 1),
        run_after = CASE WHEN left_running = 0 OR NEW.status = 'Failed' THEN now() ELSE run_after END
    WHERE id = NEW.parent_id;
    IF left_running = 0 OR NEW.status = 'Failed' THEN
        PERFORM imagend_wake(video_backend, 1);
    END IF;
    RETURN NULL;
END $$;

-- (AFTER UPDATE, not OF status: a waiting scene a producer cancels ends by a BEFORE trigger on
-- cancel_requested, and its video must hear of it too.)
CREATE OR REPLACE TRIGGER images_video_scene_ended
    AFTER UPDATE ON images
    FOR EACH ROW
    WHEN (NEW.parent_id IS NOT NULL AND NEW.status IN ('ReadyToPublish', 'Failed')
          AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION imagend_video_scene_ended();

-- A video that fails (a failed scene, bad input, a cancel) cancels its scenes still to be made: a waiting
-- one ends Failed 'cancelled' in this statement (images_cancel_waiting), one being made at its next step.
CREATE OR REPLACE FUNCTION imagend_video_failed() RETURNS trigger
LANGUAGE plpgsql SET jit = off AS $$
BEGIN
    UPDATE images SET cancel_requested = true
    WHERE parent_id = NEW.id AND status IN ('ReadyToGenerate', 'Generate') AND NOT cancel_requested;
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER images_video_failed
    AFTER UPDATE ON images
    FOR EACH ROW
    WHEN (NEW.task = 'video' AND NEW.status = 'Failed' AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION imagend_video_failed();

-- A producer trying a failed video again ("Trying again" in docs/producers.md): its scenes that failed or
-- were cancelled are tried again too, and the video waits for them (parked) when there are any.
CREATE OR REPLACE FUNCTION imagend_video_retried() RETURNS trigger
LANGUAGE plpgsql SET jit = off AS $$
BEGIN
    UPDATE images SET status = 'ReadyToGenerate', error = NULL
    WHERE parent_id = NEW.id AND status = 'Failed';
    IF FOUND THEN
        UPDATE images SET run_after = now() + interval '10 years', phase = 'scenes' WHERE id = NEW.id;
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER images_video_retried
    AFTER UPDATE OF status ON images
    FOR EACH ROW
    WHEN (NEW.task = 'video' AND OLD.status = 'Failed' AND NEW.status = 'ReadyToGenerate')
    EXECUTE FUNCTION imagend_video_retried();

COMMIT;
