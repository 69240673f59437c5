-- imagend schema. Idempotent: the daemon applies it at every start, and
-- `psql -f imagend/db/sql/schema.sql` does the same by hand. An ancestor (Go service)
-- table is upgraded in place: its columns and rows are kept, new columns added.
BEGIN;

-- Two daemons starting together must not race on CREATE/ALTER.
SELECT pg_advisory_xact_lock(hashtext('imagend.schema'));

-- The ancestor's table, unchanged.
CREATE TABLE IF NOT EXISTS images (
    id         SERIAL PRIMARY KEY,
    prompt     TEXT NOT NULL,
    uuid       TEXT,
    status     TEXT NOT NULL DEFAULT 'ReadyToGenerate',
    base64     TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- What a producer may write (all optional; NULL means "the daemon's default").
ALTER TABLE images ADD COLUMN IF NOT EXISTS negative_prompt   TEXT;
ALTER TABLE images ADD COLUMN IF NOT EXISTS style             TEXT;
ALTER TABLE images ADD COLUMN IF NOT EXISTS width             INTEGER;
ALTER TABLE images ADD COLUMN IF NOT EXISTS height            INTEGER;
ALTER TABLE images ADD COLUMN IF NOT EXISTS seed              BIGINT;
ALTER TABLE images ADD COLUMN IF NOT EXISTS steps             INTEGER;
ALTER TABLE images ADD COLUMN IF NOT EXISTS guidance          DOUBLE PRECISION;
ALTER TABLE images ADD COLUMN IF NOT EXISTS scheduler         TEXT;
ALTER TABLE images ADD COLUMN IF NOT EXISTS backend           TEXT;
ALTER TABLE images ADD COLUMN IF NOT EXISTS priority          INTEGER NOT NULL DEFAULT 0;
ALTER TABLE images ADD COLUMN IF NOT EXISTS params            JSONB;
ALTER TABLE images ADD COLUMN IF NOT EXISTS max_attempts      INTEGER;
ALTER TABLE images ADD COLUMN IF NOT EXISTS cancel_requested  BOOLEAN NOT NULL DEFAULT false;
-- The local backend's inputs (docs/local.md): a model by name (IMAGEND_MODELS), LoRAs, an init image
-- (image-to-image; with a mask, inpainting; task 'upscale'), a reference image (IP-Adapter). An
-- *_image_id names another row whose finished image is the input: the row waits until that row ends.
ALTER TABLE images ADD COLUMN IF NOT EXISTS model              TEXT;
ALTER TABLE images ADD COLUMN IF NOT EXISTS loras              JSONB;
ALTER TABLE images ADD COLUMN IF NOT EXISTS task               TEXT;
ALTER TABLE images ADD COLUMN IF NOT EXISTS init_image         TEXT;
ALTER TABLE images ADD COLUMN IF NOT EXISTS init_image_id      INTEGER;
ALTER TABLE images ADD COLUMN IF NOT EXISTS strength           REAL;
ALTER TABLE images ADD COLUMN IF NOT EXISTS mask_image         TEXT;
ALTER TABLE images ADD COLUMN IF NOT EXISTS reference_image    TEXT;
ALTER TABLE images ADD COLUMN IF NOT EXISTS reference_image_id INTEGER;
ALTER TABLE images ADD COLUMN IF NOT EXISTS reference_scale    REAL;
ALTER TABLE images ADD COLUMN IF NOT EXISTS upscale            REAL;
-- ControlNet (docs/local.md, "ControlNet"): [{"image" | "image_id", "type", "model", "strength", "start",
-- "end"}, …], each control image base64 or a finished row's (an upload's) id. Hires fix ("Hires fix"):
-- generate at the row's size, upscale by hr_scale (hr_upscaler), image-to-image at hr_strength for hr_steps.
ALTER TABLE images ADD COLUMN IF NOT EXISTS controls           JSONB;
ALTER TABLE images ADD COLUMN IF NOT EXISTS hr_scale           REAL;
ALTER TABLE images ADD COLUMN IF NOT EXISTS hr_steps           INTEGER;
ALTER TABLE images ADD COLUMN IF NOT EXISTS hr_strength        REAL;
ALTER TABLE images ADD COLUMN IF NOT EXISTS hr_upscaler        TEXT;
-- A web app's: where the daemon POSTs the row's end (a webhook; imagend_webhooks below).
ALTER TABLE images ADD COLUMN IF NOT EXISTS callback_url       TEXT;
-- The customer a row is for (docs/owners.md): NULL is the shared anonymous owner. Not a daemon: a
-- daemon's identity is locked_by / imagend_daemons.owner.
ALTER TABLE images ADD COLUMN IF NOT EXISTS owner             TEXT;
-- Several images per row (docs/local.md, "Several images per row"): n images (1-8, NULL 1) made as one
-- batch with consecutive seeds; preset: a name of imagend_presets (below) whose recipe fills what the row
-- left NULL (docs/presets.md).
ALTER TABLE images ADD COLUMN IF NOT EXISTS n                 INTEGER;
ALTER TABLE images ADD COLUMN IF NOT EXISTS preset            TEXT;
-- What the daemon writes.
-- vtime: an owned row's place in its owner's fair share (schema_owners.sql sets it at insert; NULL for
-- anonymous rows). cost: what a finished owned row cost, in the operator's units (imagend_costs).
ALTER TABLE images ADD COLUMN IF NOT EXISTS vtime             DOUBLE PRECISION;
ALTER TABLE images ADD COLUMN IF NOT EXISTS cost              DOUBLE PRECISION;
-- preview: a small WebP (base64) of the image forming, every 2 s or so while it generates.
ALTER TABLE images ADD COLUMN IF NOT EXISTS preview           TEXT;
ALTER TABLE images ADD COLUMN IF NOT EXISTS run_after         TIMESTAMPTZ NOT NULL DEFAULT now();
-- attempts: claims that counted (the current claim's number while in Generate).
-- crashes: times a daemon died while generating the row; not attempts (see images_rescue).
ALTER TABLE images ADD COLUMN IF NOT EXISTS attempts          INTEGER NOT NULL DEFAULT 0;
ALTER TABLE images ADD COLUMN IF NOT EXISTS crashes           INTEGER NOT NULL DEFAULT 0;
ALTER TABLE images ADD COLUMN IF NOT EXISTS error             TEXT;
ALTER TABLE images ADD COLUMN IF NOT EXISTS warning           TEXT;
ALTER TABLE images ADD COLUMN IF NOT EXISTS progress          REAL;
ALTER TABLE images ADD COLUMN IF NOT EXISTS locked_by         TEXT;
ALTER TABLE images ADD COLUMN IF NOT EXISTS lease_until       TIMESTAMPTZ;
ALTER TABLE images ADD COLUMN IF NOT EXISTS submitted_at      TIMESTAMPTZ;
ALTER TABLE images ADD COLUMN IF NOT EXISTS started_at        TIMESTAMPTZ;
ALTER TABLE images ADD COLUMN IF NOT EXISTS finished_at       TIMESTAMPTZ;
ALTER TABLE images ADD COLUMN IF NOT EXISTS generation_seconds DOUBLE PRECISION;
ALTER TABLE images ADD COLUMN IF NOT EXISTS output_path       TEXT;
-- Where the image lives besides (or instead of) base64 (IMAGEND_STORAGE_URL), and its thumbnail.
ALTER TABLE images ADD COLUMN IF NOT EXISTS output_url        TEXT;
ALTER TABLE images ADD COLUMN IF NOT EXISTS thumbnail_url     TEXT;
ALTER TABLE images ADD COLUMN IF NOT EXISTS thumbnail         TEXT;
-- Producer: png (default), webp or jpeg, and quality 1-100 (validation.py); the daemon writes back
-- the format the image was stored in.
ALTER TABLE images ADD COLUMN IF NOT EXISTS format            TEXT;
ALTER TABLE images ADD COLUMN IF NOT EXISTS quality           INTEGER;
-- A finished image the store could not take (down, full): kept in the row's base64 until the spool
-- (maintenance/spool.py) has written it to the store. NULL otherwise.
ALTER TABLE images ADD COLUMN IF NOT EXISTS spooled_at        TIMESTAMPTZ;
-- A row of n > 1 images: each one's {index, seed, url, path, thumbnail_url, thumbnail, base64} (base64 only
-- where no store holds it); image 1 is also the row's base64 / output_url. NULL for one image.
ALTER TABLE images ADD COLUMN IF NOT EXISTS images            JSONB;
-- A preset's template applied to the producer's prompt (the prompt itself stays the producer's words, so a
-- retry applies the template once).
ALTER TABLE images ADD COLUMN IF NOT EXISTS effective_prompt  TEXT;

-- Ancestor rows caught mid-flight by the upgrade: only Fusion Brain rows ever had a
-- task uuid, so they are resumed by polling instead of being lost.
UPDATE images SET backend = 'fusionbrain'
WHERE status = 'Generate' AND uuid IS NOT NULL AND backend IS NULL;

-- NOT VALID: an upgraded ancestor table may hold odd historic values; new writes are checked.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'images_status_known') THEN
        ALTER TABLE images ADD CONSTRAINT images_status_known
            CHECK (status IN ('ReadyToGenerate', 'Generate', 'ReadyToPublish', 'Failed')) NOT VALID;
    END IF;
END $$;

-- Serves the claim: only waiting rows are indexed, so finished rows cost nothing. Within a priority,
-- owned rows in their fair-share order (vtime); anonymous rows (vtime NULL) first, then in id order as
-- before owners existed. Before owners the index was (priority DESC, id): replaced once.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_indexes
               WHERE indexname = 'images_ready_idx' AND indexdef NOT LIKE '%vtime%') THEN
        DROP INDEX images_ready_idx;
    END IF;
END $$;
CREATE INDEX IF NOT EXISTS images_ready_idx
    ON images (priority DESC, vtime NULLS FIRST, id) WHERE status = 'ReadyToGenerate';
-- Serves lease expiry, remote polling and the next wake-up time: every row in Generate (a few per
-- daemon), whose leases are then read from the heap. Keyed on id, not lease_until, so that the most
-- frequent write of all, a lease renewal with its progress (twice a second per generating batch),
-- touches no indexed column and can be a HOT update (see fillfactor below; docs/storage.md).
-- Before 0.1 the index was on lease_until: replaced once.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_indexes
               WHERE indexname = 'images_lease_idx' AND indexdef LIKE '%(lease_until)%') THEN
        DROP INDEX images_lease_idx;
    END IF;
END $$;
CREATE INDEX IF NOT EXISTS images_lease_idx
    ON images (id) WHERE status = 'Generate';

-- Table health under years of traffic (measured in bench/storage_soak.py; docs/storage.md):
-- fillfactor 90 leaves each heap page room for the HOT updates of lease renewals and progress;
-- autovacuum visits the table after 1,000 + 2 % of its rows changed (the default 20 % lets a
-- queue of millions of finished rows carry hundreds of thousands of dead ones), and after
-- inserts alone too (visibility map kept current for index-only scans). Set only when different,
-- as ALTER TABLE … SET waits for (and cancels) a running autovacuum.
DO $$
DECLARE
    wanted text[] := ARRAY['fillfactor=90', 'autovacuum_vacuum_scale_factor=0.02',
                           'autovacuum_vacuum_threshold=1000', 'autovacuum_analyze_scale_factor=0.02',
                           'autovacuum_vacuum_insert_scale_factor=0.05'];
BEGIN
    IF NOT (SELECT COALESCE(reloptions, '{}') @> wanted FROM pg_class WHERE oid = 'images'::regclass) THEN
        ALTER TABLE images SET (fillfactor = 90, autovacuum_vacuum_scale_factor = 0.02,
                                autovacuum_vacuum_threshold = 1000, autovacuum_analyze_scale_factor = 0.02,
                                autovacuum_vacuum_insert_scale_factor = 0.05);
    END IF;
END $$;

-- Finished rows whose image waits in the row for the store (few, and only during an outage).
CREATE INDEX IF NOT EXISTS images_spooled_idx ON images (id) WHERE spooled_at IS NOT NULL;

-- Rows that wait for another row's image (init_image_id, reference_image_id): few, and read when a
-- row ends to wake the daemons (imagend_wake_dependents).
CREATE INDEX IF NOT EXISTS images_chained_idx
    ON images (id) WHERE status = 'ReadyToGenerate'
                     AND (init_image_id IS NOT NULL OR reference_image_id IS NOT NULL);

CREATE OR REPLACE FUNCTION imagend_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER images_touch_updated_at
    BEFORE UPDATE ON images
    FOR EACH ROW EXECUTE FUNCTION imagend_touch_updated_at();

-- Wake-ups (docs/fleet.md): a row that becomes claimable wakes one idle daemon, not the fleet. Each
-- daemon says in imagend_daemons whether it is idle (idle_since, set by its own empty claim) and on
-- which channel its host listens (wake_channel: one LISTEN per host, whose relay wakes that host's
-- daemons). imagend_wake(backend, rows) NOTIFYs the host channels of up to `rows` idle daemons serving
-- `backend` (a daemon that serves none of a row's names fails it: any idle one then), longest idle
-- first, the payload naming which of that host's daemons to wake (owners). A busy fleet has no idle daemon:
-- then a producer's commit NOTIFYs nothing at all (a NOTIFY signals every listening backend).
-- A daemon woken stays idle in imagend_daemons until its claim (milliseconds later); the wake is noted
-- in imagend_wakes (appended, never updated: no producer waits on another's lock, nor on a daemon's) so
-- that the next row goes to another idle daemon. A daemon's heartbeat forgets its old wakes.
CREATE TABLE IF NOT EXISTS imagend_wakes (
    owner    TEXT NOT NULL,
    woken_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS imagend_wakes_owner_idx ON imagend_wakes (owner, woken_at);

-- SECURITY DEFINER: a producer's role needs no privilege on imagend_daemons or imagend_wakes to insert.
-- It runs in every producer's INSERT, whose time it adds to (a row's pickup starts there): its cost is the
-- executor's start of each statement's plan, so the usual case (one row, or nobody idle) runs one small
-- SELECT, and the write and the NOTIFY only for a daemon found; a burst's rows group their NOTIFYs by host.
CREATE OR REPLACE FUNCTION imagend_wake(backend_name TEXT, rows BIGINT) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    one_owner TEXT;
    one_channel TEXT;
    owners TEXT[];
    channels TEXT[];
BEGIN
    IF rows = 1 THEN
        SELECT i.owner, i.wake_channel INTO one_owner, one_channel FROM imagend_idle_daemons(backend_name, 1) AS i;
        IF one_owner IS NOT NULL THEN
            INSERT INTO imagend_wakes (owner) VALUES (one_owner);
            PERFORM pg_notify(one_channel, one_owner);
        END IF;
        RETURN;
    END IF;
    SELECT array_agg(i.owner), array_agg(i.wake_channel) INTO owners, channels
    FROM imagend_idle_daemons(backend_name, rows) AS i;
    IF owners IS NOT NULL THEN
        INSERT INTO imagend_wakes (owner) SELECT unnest(owners);
        PERFORM pg_notify(c.channel, string_agg(c.owner, ' '))
        FROM unnest(channels, owners) AS c(channel, owner)
        GROUP BY c.channel;
    END IF;
END $$;

DROP TRIGGER IF EXISTS images_notify_new ON images;
DROP TRIGGER IF EXISTS images_notify_requeued ON images;
-- New rows wake daemons through images_inserted, in schema_operations.sql: that one AFTER INSERT trigger
-- also appends the queue counts, whose table that file makes in the same transaction.

-- (jit = off on these functions: the planner knows nothing of a transition table's size, and on
-- PostgreSQL 15 its guess crossed jit_above_cost: 50 ms of JIT compilation per statement.)
-- A row back to ReadyToGenerate (a producer's retry, a release, a rescue; one due later wakes a daemon,
-- which sets its timer). Row level with a WHEN: the claims, lease renewals and every other UPDATE of
-- the loops run nothing at all.
CREATE OR REPLACE FUNCTION imagend_wake_requeued() RETURNS trigger
LANGUAGE plpgsql SET jit = off AS $$
BEGIN
    PERFORM imagend_wake(NEW.backend, 1);
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS images_wake_updated ON images;
DROP FUNCTION IF EXISTS imagend_wake_updated();
CREATE OR REPLACE TRIGGER images_wake_requeued
    AFTER UPDATE OF status ON images
    FOR EACH ROW
    WHEN (NEW.status = 'ReadyToGenerate' AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION imagend_wake_requeued();

-- A row that ended may be the source of waiting chained rows (init_image_id, reference_image_id): the
-- claim skipped them until now, so one idle daemon per such row is woken. The chained index is almost
-- always empty: one probe per row that ends.
CREATE OR REPLACE FUNCTION imagend_wake_dependents() RETURNS trigger
LANGUAGE plpgsql SET jit = off AS $$
BEGIN
    PERFORM imagend_wake(w.backend, count(*))
    FROM images AS w
    WHERE w.status = 'ReadyToGenerate'
      AND (w.init_image_id IS NOT NULL OR w.reference_image_id IS NOT NULL)
      AND NEW.id IN (w.init_image_id, w.reference_image_id)
    GROUP BY w.backend;
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER images_wake_dependents
    AFTER UPDATE OF status ON images
    FOR EACH ROW
    WHEN (NEW.status IN ('ReadyToPublish', 'Failed') AND OLD.status IS DISTINCT FROM NEW.status
          -- images_mark_done wakes them itself, once per batch (queries.sql says why)
          AND current_setting('imagend.wake_dependents', true) IS DISTINCT FROM 'off')
    EXECUTE FUNCTION imagend_wake_dependents();

-- A pause lifted (imagend -resume): every idle daemon looks again.
CREATE OR REPLACE FUNCTION imagend_wake_all() RETURNS trigger
LANGUAGE plpgsql SET jit = off AS $$
BEGIN
    PERFORM imagend_wake(NULL, (SELECT count(*) FROM imagend_daemons));
    RETURN NULL;
END $$;

-- Chained rows in a cycle (A's source is B, B's is A; or longer) would wait for each other forever.
-- The row that closes the cycle (by INSERT, or by an UPDATE of its sources or a requeue) ends Failed
-- at once with the cycle in its error; the others then fail at their claim, naming it ("its source
-- failed: …"). Only waiting rows are followed: a source that runs or ran cannot be in a cycle.
CREATE OR REPLACE FUNCTION imagend_refuse_chain_cycle() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    cycle INTEGER[];
BEGIN
    WITH RECURSIVE chain (id, path) AS (
        SELECT source, ARRAY[NEW.id, source]
        FROM unnest(ARRAY[NEW.init_image_id, NEW.reference_image_id]) AS source
        WHERE source IS NOT NULL AND source <> NEW.id
        UNION ALL
        SELECT next.source, chain.path || next.source
        FROM chain
        JOIN images AS i ON i.id = chain.id AND i.status = 'ReadyToGenerate'
        CROSS JOIN LATERAL unnest(ARRAY[i.init_image_id, i.reference_image_id]) AS next(source)
        WHERE chain.id <> NEW.id
          AND next.source IS NOT NULL
          AND NOT next.source = ANY (chain.path[2:])
          AND cardinality(chain.path) < 1000
    )
    SELECT path INTO cycle FROM chain WHERE id = NEW.id LIMIT 1;
    IF cycle IS NOT NULL THEN
        NEW.status := 'Failed';
        NEW.error := 'chained rows form a cycle: ' || array_to_string(cycle, ' -> ')
                     || '; each waits for the next one''s image';
        NEW.finished_at := now();
    END IF;
    RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER images_refuse_chain_cycle
    BEFORE INSERT OR UPDATE OF init_image_id, reference_image_id, status ON images
    FOR EACH ROW
    WHEN (NEW.status = 'ReadyToGenerate' AND (NEW.init_image_id IS NOT NULL OR NEW.reference_image_id IS NOT NULL))
    EXECUTE FUNCTION imagend_refuse_chain_cycle();

DROP TRIGGER IF EXISTS images_notify_sources_done ON images;

-- A producer putting a finished row back (docs/producers.md, "Trying again") means a fresh start:
-- the cancel flag, the crash count and, unless the producer set it, the attempt count
-- are reset, so `UPDATE images SET status = 'ReadyToGenerate' WHERE id = 42` just works.
CREATE OR REPLACE FUNCTION imagend_requeue_finished() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.cancel_requested IS NOT DISTINCT FROM OLD.cancel_requested THEN
        NEW.cancel_requested := false;
    END IF;
    IF NEW.attempts IS NOT DISTINCT FROM OLD.attempts THEN
        NEW.attempts := 0;
    END IF;
    NEW.crashes := 0;
    NEW.finished_at := NULL;
    NEW.progress := NULL;
    RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER images_requeue_finished
    BEFORE UPDATE OF status ON images
    FOR EACH ROW
    WHEN (OLD.status IN ('ReadyToPublish', 'Failed') AND NEW.status = 'ReadyToGenerate')
    EXECUTE FUNCTION imagend_requeue_finished();

-- Channel `imagend_done`: payload {"id": …, "status": "ReadyToPublish"|"Failed"} on
-- every terminal transition, so producers can LISTEN instead of polling.
CREATE OR REPLACE FUNCTION imagend_notify_done() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('imagend_done',
                      json_build_object('id', NEW.id, 'status', NEW.status)::text);
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER images_notify_done
    AFTER UPDATE OF status ON images
    FOR EACH ROW
    WHEN (NEW.status IN ('ReadyToPublish', 'Failed') AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION imagend_notify_done();

-- Webhooks (docs/operations.md, "Webhooks"): the outbox. A row naming a callback_url that ends gets an
-- event here in the same transaction as its end, so an end is never lost; a daemon's webhook thread
-- claims due events (FOR UPDATE SKIP LOCKED, a lease in next_at: one that dies mid-delivery leaves the
-- event to be claimed again, same event_id) and POSTs them until the receiver answers 2xx or the event
-- expires (IMAGEND_WEBHOOK_EXPIRE).
CREATE TABLE IF NOT EXISTS imagend_webhooks (
    id           BIGSERIAL PRIMARY KEY,
    event_id     TEXT NOT NULL DEFAULT ('msg_' || replace(gen_random_uuid()::text, '-', '')),
    image_id     INTEGER NOT NULL,
    url          TEXT NOT NULL,
    status       TEXT NOT NULL,             -- the row's status when the event was made
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    next_at      TIMESTAMPTZ NOT NULL DEFAULT now(),  -- due; while a daemon delivers it, its lease
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    delivered_at TIMESTAMPTZ,
    gave_up_at   TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS imagend_webhooks_due_idx
    ON imagend_webhooks (next_at) WHERE delivered_at IS NULL AND gave_up_at IS NULL;
CREATE INDEX IF NOT EXISTS imagend_webhooks_created_idx ON imagend_webhooks (created_at);

CREATE OR REPLACE FUNCTION imagend_webhook_enqueue() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO imagend_webhooks (image_id, url, status) VALUES (NEW.id, NEW.callback_url, NEW.status);
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER images_webhook_enqueue
    AFTER UPDATE OF status ON images
    FOR EACH ROW
    WHEN (NEW.callback_url IS NOT NULL AND NEW.status IN ('ReadyToPublish', 'Failed')
          AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION imagend_webhook_enqueue();

-- One row per running daemon, written by its liveness thread every second or so. A
-- daemon whose heartbeat is older than IMAGEND_DEAD_AFTER is dead: any other daemon
-- rescues its rows at once (images_rescue) instead of waiting for their leases.
CREATE TABLE IF NOT EXISTS imagend_daemons (
    owner        TEXT PRIMARY KEY,          -- what images.locked_by shows: host:pid:random
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    version      TEXT NOT NULL,
    backends     TEXT[] NOT NULL,
    device       TEXT,
    model        TEXT,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    rows_held    INTEGER NOT NULL DEFAULT 0,
    -- The rows whose generation (or submission) it began last: if it dies, these were in its
    -- hands (a crash each), the rest of what it held was only claimed ahead (charged nothing).
    working      INTEGER[] NOT NULL DEFAULT '{}'
);
-- Wake-ups (see imagend_wake): since when it has found nothing to claim (NULL: busy), and the channel
-- its host's relay LISTENs on (NULL: it hears no wake-up, and polls).
ALTER TABLE imagend_daemons ADD COLUMN IF NOT EXISTS idle_since   TIMESTAMPTZ;
ALTER TABLE imagend_daemons ADD COLUMN IF NOT EXISTS wake_channel TEXT;
-- Its IMAGEND_BACKEND: a row with no backend is the oldest live daemon's default's (images_claim_batch).
ALTER TABLE imagend_daemons ADD COLUMN IF NOT EXISTS default_backend TEXT;

-- Whom imagend_wake (above) wakes: up to `rows` idle daemons, those serving `backend_name` first, then the longest
-- idle; never one woken since it went idle. A SQL function of one SELECT: inlined into its callers' plans.
CREATE OR REPLACE FUNCTION imagend_idle_daemons(backend_name TEXT, rows BIGINT)
RETURNS TABLE (owner TEXT, wake_channel TEXT) LANGUAGE sql STABLE AS $$
    SELECT d.owner, d.wake_channel
    FROM imagend_daemons AS d
    WHERE d.idle_since IS NOT NULL
      AND d.wake_channel IS NOT NULL
      AND d.heartbeat_at > now() - interval '10 seconds'  -- it beats every second: past 10 s it is gone or stuck
      AND NOT EXISTS (SELECT 1 FROM imagend_wakes AS w WHERE w.owner = d.owner AND w.woken_at >= d.idle_since)
    ORDER BY (backend_name IS NULL OR backend_name = ANY (d.backends)) DESC, d.idle_since
    LIMIT rows
$$;

-- Presets (docs/presets.md): named recipes an operator defines (`imagend -preset NAME key=value …`, or SQL).
-- A row naming one gets, for each column it left NULL, the preset's value; the prompt template's {prompt}
-- takes the row's prompt. post: post-processing steps applied to each finished image (e.g. ["token"]).
CREATE TABLE IF NOT EXISTS imagend_presets (
    name            TEXT PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
    prompt          TEXT CHECK (prompt IS NULL OR position('{prompt}' IN prompt) > 0),
    negative_prompt TEXT,
    style           TEXT,
    width           INTEGER,
    height          INTEGER,
    model           TEXT,
    loras           JSONB,
    steps           INTEGER,
    guidance        DOUBLE PRECISION,
    scheduler       TEXT,
    n               INTEGER,
    post            JSONB NOT NULL DEFAULT '[]',
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Which daemon is working on which row right now (not rows it merely holds, claimed ahead).
CREATE OR REPLACE VIEW imagend_working AS
SELECT i.id, i.locked_by AS owner, i.progress
FROM imagend_daemons AS d
JOIN images AS i ON i.id = ANY (d.working) AND i.locked_by = d.owner AND i.status = 'Generate';

-- The operators' view of the queue (images_queue_status) is in schema_operations.sql.

COMMIT;
