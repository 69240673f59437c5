-- imagend schema, owners part (docs/owners.md; applied after schema.sql, idempotent as it is): plans,
-- owners and their counters, the fair-share order of owned rows, costs, usage, per-owner API keys.
--
-- Words: an *owner* here is a customer, the producer column images.owner (NULL: the shared anonymous
-- owner). A daemon's identity is something else: images.locked_by, imagend_daemons.owner.
--
-- How the claim uses this (images_claim_batch):
-- - Fair share: each owned row gets a virtual time (vtime) at insert: after the owner's last waiting
--   row, and never before the queue's present (the smallest vtime waiting), plus 1/weight. The claim's
--   index orders a priority's rows by vtime, so owners that wait together are served round-robin in
--   proportion to their weights (weight 3: three rows for each one of a weight-1 owner), an owner alone
--   gets everything, and an owner who arrives late starts at the queue's present, not behind a
--   backlog. The claim itself stays one index scan: no per-owner work at claim time.
-- - Caps, rates, budgets: imagend_owners.running counts an owner's rows in Generate, kept by triggers
--   on every status change (claims, finishes, releases, rescues, retries, cancels, deletes). The claim
--   leaves out owners that are blocked (at their cap, out of rate, over budget: imagend_owners_blocked,
--   read once per claim) before it chooses its batch, and a row trigger admits each claimed row under
--   the owner's counter row lock (imagend_owner_moved): a row over the cap is not claimed (it stays
--   waiting), whatever two daemons saw at the same moment. Never enforced by counting.
-- With no owned row, none of these triggers runs (each has a WHEN on the owner) and the claim reads an
-- empty imagend_owners once.
BEGIN;

SELECT pg_advisory_xact_lock(hashtext('imagend.schema'));

-- Plans: managed by SQL, `imagend -plan NAME k=v …`, and listed by `imagend -plans`. NULL: no limit.
CREATE TABLE IF NOT EXISTS imagend_plans (
    name            TEXT PRIMARY KEY,
    max_running     INTEGER,                            -- rows in Generate across the whole fleet
    weight          DOUBLE PRECISION NOT NULL DEFAULT 1, -- share of the fleet under contention
    max_waiting     INTEGER,                            -- rows waiting; an insert beyond it ends Failed
    rate_per_minute DOUBLE PRECISION,                   -- rows started per minute (a bucket of one minute)
    budget          DOUBLE PRECISION,                   -- cost units per budget_period
    budget_period   TEXT NOT NULL DEFAULT 'day',        -- day, week or month (UTC)
    is_default      BOOLEAN NOT NULL DEFAULT false,     -- the plan of an owner with none (at most one)
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT imagend_plans_name_ok CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$'),
    CONSTRAINT imagend_plans_max_running_positive CHECK (max_running > 0),
    -- 'NaN' compares above every number in Postgres: the upper bounds keep it (and infinity) out.
    CONSTRAINT imagend_plans_weight_positive CHECK (weight > 0 AND weight <= 1000000),
    CONSTRAINT imagend_plans_max_waiting_positive CHECK (max_waiting > 0),
    CONSTRAINT imagend_plans_rate_positive CHECK (rate_per_minute > 0 AND rate_per_minute <= 1000000),
    CONSTRAINT imagend_plans_budget_positive CHECK (budget > 0 AND budget < 1e15),
    CONSTRAINT imagend_plans_budget_period_known CHECK (budget_period IN ('day', 'week', 'month'))
);
CREATE UNIQUE INDEX IF NOT EXISTS imagend_plans_default_idx ON imagend_plans (is_default) WHERE is_default;

-- Owners: a row per owner that ever inserted a row (made by the insert trigger) or was assigned a
-- plan. plan NULL: the default plan (is_default), or no limits at all when there is none. A plan
-- deleted while owners use it leaves them on the default plan (ON DELETE SET NULL).
CREATE TABLE IF NOT EXISTS imagend_owners (
    owner         TEXT PRIMARY KEY,
    plan          TEXT REFERENCES imagend_plans (name) ON UPDATE CASCADE ON DELETE SET NULL,
    running       INTEGER NOT NULL DEFAULT 0,           -- its rows in Generate now (triggers below)
    spent         DOUBLE PRECISION NOT NULL DEFAULT 0,  -- cost of its rows finished since spent_since
    spent_since   TIMESTAMPTZ,                          -- the budget period `spent` counts
    rate_tokens   DOUBLE PRECISION,                     -- rate_per_minute's bucket, as of rate_at
    rate_at       TIMESTAMPTZ,
    blocked_until TIMESTAMPTZ,                          -- out of rate or over budget until then
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- Why blocked_until: 'rate' or 'budget' (whose waiting rows the processor pass ends Failed).
ALTER TABLE imagend_owners ADD COLUMN IF NOT EXISTS blocked_reason TEXT;
-- What left Generate since the owner's counters were last folded: appended by the trigger of every
-- finishing write (a finish never waits on a claim, nor two finishes on each other), folded into
-- imagend_owners by the next claim of that owner's rows, under its lock. Until folded, a release still
-- counts as running: late, never early, so the cap can only be under-used for a moment, never exceeded.
CREATE TABLE IF NOT EXISTS imagend_owner_releases (
    owner   TEXT NOT NULL,
    running INTEGER NOT NULL,                          -- rows that left Generate (or -n: entered it)
    cost    DOUBLE PRECISION NOT NULL DEFAULT 0,       -- what the finished ones cost
    at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS imagend_owner_releases_owner_idx ON imagend_owner_releases (owner);

-- The owners that may be blocked: those running something, or blocked by rate or budget. A claim reads
-- only these (a few per daemon), whatever the number of owners.
CREATE INDEX IF NOT EXISTS imagend_owners_busy_idx
    ON imagend_owners (owner) WHERE running > 0 OR blocked_until IS NOT NULL;

-- Owned waiting rows: an owner's last vtime and its waiting count (max_waiting); the queue's present.
-- Each predicate starts with its NULL test: an anonymous row's insert or update, which every index
-- checks, is refused by the first (cheapest) test.
CREATE INDEX IF NOT EXISTS images_owner_ready_idx
    ON images (owner, vtime) WHERE owner IS NOT NULL AND status = 'ReadyToGenerate';
CREATE INDEX IF NOT EXISTS images_vtime_ready_idx
    ON images (vtime) WHERE vtime IS NOT NULL AND status = 'ReadyToGenerate';
-- An owner's rows, newest first (GET /v1/images with an owner's key), and its usage per day.
CREATE INDEX IF NOT EXISTS images_owner_id_idx ON images (owner, id DESC) WHERE owner IS NOT NULL;

-- Costs (docs/owners.md, "Cost"): the operator's formula, per backend / model / task (NULL: any; the
-- most specific line wins). A finished owned row costs
--     multiplier × (per_image + per_second × generation_seconds
--                   + per_megapixel_step × width × height / 1e6 × steps)
-- The video module's `duration × base × multiplier` is per_second = base, multiplier = the quality's.
-- No line at all: 1 unit per image.
CREATE TABLE IF NOT EXISTS imagend_costs (
    id                 SERIAL PRIMARY KEY,
    backend            TEXT,
    model              TEXT,
    task               TEXT,
    per_image          DOUBLE PRECISION NOT NULL DEFAULT 0 CHECK (per_image >= 0 AND per_image < 1e15),
    per_second         DOUBLE PRECISION NOT NULL DEFAULT 0 CHECK (per_second >= 0 AND per_second < 1e15),
    per_megapixel_step DOUBLE PRECISION NOT NULL DEFAULT 0
        CHECK (per_megapixel_step >= 0 AND per_megapixel_step < 1e15),
    multiplier         DOUBLE PRECISION NOT NULL DEFAULT 1 CHECK (multiplier >= 0 AND multiplier < 1e15)
);
CREATE UNIQUE INDEX IF NOT EXISTS imagend_costs_key_idx
    ON imagend_costs (COALESCE(backend, ''), COALESCE(model, ''), COALESCE(task, ''));

CREATE OR REPLACE FUNCTION imagend_cost(backend_name TEXT, model_name TEXT, task_name TEXT, seconds FLOAT8,
                                        width INTEGER, height INTEGER, steps INTEGER) RETURNS FLOAT8
LANGUAGE sql STABLE AS $$
    SELECT COALESCE(
        (SELECT c.multiplier * (c.per_image + c.per_second * COALESCE(seconds, 0)
                                + c.per_megapixel_step * COALESCE(width, 0) * COALESCE(height, 0) / 1e6
                                  * COALESCE(steps, 0))
         FROM imagend_costs AS c
         WHERE (c.backend IS NULL OR c.backend = backend_name)
           AND (c.model IS NULL OR c.model = model_name)
           AND (c.task IS NULL OR c.task = task_name)
         ORDER BY (c.backend IS NOT NULL)::int + (c.model IS NOT NULL)::int + (c.task IS NOT NULL)::int DESC, c.id
         LIMIT 1),
        1.0)
$$;

-- The start of the budget period that contains `at` (UTC).
CREATE OR REPLACE FUNCTION imagend_period_start(period TEXT, at TIMESTAMPTZ) RETURNS TIMESTAMPTZ
LANGUAGE sql IMMUTABLE AS $$
    SELECT date_trunc(period, at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
$$;

-- An owner's plan: its own, or the default one; NULL (no limits, weight 1) when neither exists.
CREATE OR REPLACE FUNCTION imagend_plan_of(owner_name TEXT) RETURNS imagend_plans
LANGUAGE sql STABLE AS $$
    SELECT p.*
    FROM imagend_plans AS p
    LEFT JOIN imagend_owners AS o ON o.owner = owner_name
    WHERE p.name = o.plan OR (o.plan IS NULL AND p.is_default)
    ORDER BY p.is_default
    LIMIT 1
$$;

-- The owners whose rows a claim leaves waiting now: at their plan's cap, out of rate, over budget.
-- Read once per claim (and by imagend_claimable_rows, images_next_wakeups): only owners in the busy
-- index. A set-returning SQL function, which the planner inlines (ARRAY(SELECT ... FROM it)): as a
-- function of its own it was one more statement per claim, two per row (docs/fleet.md counts them).
DROP FUNCTION IF EXISTS imagend_blocked_owners();
CREATE OR REPLACE FUNCTION imagend_owners_blocked() RETURNS SETOF TEXT
LANGUAGE sql STABLE AS $$
    SELECT o.owner
    FROM imagend_owners AS o
    LEFT JOIN imagend_plans AS p ON p.name = o.plan OR (o.plan IS NULL AND p.is_default)
    WHERE (o.running > 0 OR o.blocked_until IS NOT NULL)
      AND (o.blocked_until > now()
           OR o.running - COALESCE((SELECT sum(r.running) FROM imagend_owner_releases AS r
                                    WHERE r.owner = o.owner), 0) >= p.max_running)
$$;

-- The counters of an owner locked (FOR UPDATE: the caller holds the lock), with its releases folded
-- in: running now, spent in the present budget period.
CREATE OR REPLACE FUNCTION imagend_owner_fold(owner_name TEXT, period TIMESTAMPTZ) RETURNS imagend_owners
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT SET jit = off AS $$
DECLARE
    o imagend_owners;
    freed BIGINT;
    cost FLOAT8;
BEGIN
    WITH gone AS (DELETE FROM imagend_owner_releases AS r WHERE r.owner = owner_name RETURNING r.*)
    SELECT COALESCE(sum(g.running), 0), COALESCE(sum(g.cost) FILTER (WHERE g.at >= period), 0)
    INTO freed, cost FROM gone AS g;
    UPDATE imagend_owners AS u
    SET running = greatest(u.running - freed, 0),
        spent = CASE WHEN u.spent_since >= period THEN u.spent ELSE 0 END + cost,
        spent_since = period
    WHERE u.owner = owner_name
    RETURNING u.* INTO o;
    RETURN o;
END $$;

-- Whether an owner string is one imagend takes: 1 to 200 characters, no control characters.
CREATE OR REPLACE FUNCTION imagend_owner_problem(owner_name TEXT) RETURNS TEXT
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN owner_name IS NULL THEN NULL
        WHEN length(owner_name) = 0 OR length(owner_name) > 200
        THEN 'owner must be 1 to 200 characters, got ' || length(owner_name)
        WHEN owner_name ~ '[[:cntrl:]]' THEN 'owner must not contain control characters'
    END
$$;

-- An owned row inserted: its owner exists (a row in imagend_owners, on the default plan), its plan's
-- max_waiting and budget are checked (an insert beyond either ends Failed at once, with the reason),
-- and it gets its place in the fair share (vtime). SECURITY DEFINER: a producer's role needs no
-- rights on the owners' tables.
CREATE OR REPLACE FUNCTION imagend_owner_enqueue(r images, requeued BOOLEAN) RETURNS images
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT SET jit = off AS $$
DECLARE
    problem TEXT := imagend_owner_problem(r.owner);
    plan imagend_plans;
    o imagend_owners;
    waiting BIGINT;
    present FLOAT8;
    last FLOAT8;
    period TIMESTAMPTZ;
    spent FLOAT8;
    key TEXT;
BEGIN
    IF problem IS NOT NULL THEN
        r.status := 'Failed';
        r.error := problem;
        r.finished_at := now();
        r.vtime := NULL;
        RETURN r;
    END IF;
    IF r.status NOT IN ('ReadyToGenerate', 'Generate') THEN
        RETURN r;
    END IF;
    IF requeued THEN
        r.vtime := NULL;  -- a finished row put back: a new place in the fair share, as a new row
    END IF;
    SELECT * INTO o FROM imagend_owners WHERE owner = r.owner;
    IF NOT FOUND THEN
        INSERT INTO imagend_owners (owner) VALUES (r.owner) ON CONFLICT DO NOTHING;
        SELECT * INTO o FROM imagend_owners WHERE owner = r.owner;
    END IF;
    plan := imagend_plan_of(r.owner);
    IF plan.budget IS NOT NULL THEN
        period := imagend_period_start(plan.budget_period, now());
        SELECT COALESCE(sum(released.cost), 0) INTO spent FROM imagend_owner_releases AS released
        WHERE released.owner = r.owner AND released.at >= period;
        IF o.spent_since >= period THEN
            spent := spent + o.spent;
        END IF;
    END IF;
    IF spent >= plan.budget THEN
        r.status := 'Failed';
        r.error := format('owner %s is over its plan %s''s budget: %s of %s cost units spent this %s',
                            r.owner, plan.name, round(spent::numeric, 2), plan.budget, plan.budget_period);
        r.finished_at := now();
        RETURN r;
    END IF;
    IF r.status = 'Generate' THEN  -- inserted running (by hand): counted, never refused
        INSERT INTO imagend_owner_releases (owner, running) VALUES (r.owner, -1);
        RETURN r;
    END IF;
    IF plan.max_waiting IS NOT NULL THEN
        -- One insert of this owner at a time counts (the lock lasts until its commit): never over-admitted.
        PERFORM pg_advisory_xact_lock(hashtext('imagend.owner_waiting'), hashtext(r.owner));
        SELECT count(*) INTO waiting
        FROM (SELECT 1 FROM images AS w
              WHERE w.status = 'ReadyToGenerate' AND w.owner = r.owner
              LIMIT plan.max_waiting) AS counted;
        IF waiting >= plan.max_waiting THEN
            r.status := 'Failed';
            r.error := format('owner %s already has %s rows waiting, its plan %s''s max_waiting: '
                                'try again when some have started', r.owner, waiting, plan.name);
            r.finished_at := now();
            RETURN r;
        END IF;
    END IF;
    IF r.vtime IS NULL THEN
        -- The owner's last vtime in this transaction is kept in a transaction-local setting: a bulk insert
        -- reads the indexes once per owner, not once per row (per row, rows of the same statement made
        -- each read slower than the last: quadratic).
        key := 'imagend_vtime.o' || md5(r.owner);
        last := NULLIF(current_setting(key, true), '')::float8;
        IF last IS NULL THEN
            SELECT w.vtime INTO present FROM images AS w
            WHERE w.status = 'ReadyToGenerate' AND w.vtime IS NOT NULL ORDER BY w.vtime LIMIT 1;
            -- The owner index backwards (vtime DESC, NULLS FIRST as it holds them).
            SELECT w.vtime INTO last FROM images AS w
            WHERE w.status = 'ReadyToGenerate' AND w.owner = r.owner
            ORDER BY w.vtime DESC LIMIT 1;
            last := greatest(COALESCE(present, 0), COALESCE(last, 0));
        END IF;
        r.vtime := last + 1.0 / COALESCE(plan.weight, 1);
        PERFORM set_config(key, r.vtime::text, true);
    END IF;
    RETURN r;
END $$;

CREATE OR REPLACE FUNCTION imagend_owner_inserted() RETURNS trigger
LANGUAGE plpgsql SET jit = off AS $$
BEGIN
    RETURN imagend_owner_enqueue(NEW, false);
END $$;

CREATE OR REPLACE TRIGGER images_owner_inserted
    BEFORE INSERT ON images
    FOR EACH ROW
    WHEN (NEW.owner IS NOT NULL)
    EXECUTE FUNCTION imagend_owner_inserted();

DROP TRIGGER IF EXISTS images_owner_requeued ON images;

-- An owned row entering or leaving Generate (or changing owner while in it). Entering (a claim): the
-- owner's counter row is locked, and the row admitted only under the plan's cap, rate and budget;
-- refused, it is not updated at all (RETURN NULL: it stays waiting, and the claim does not return it),
-- and an owner out of rate or budget is marked blocked for the claims that follow. Leaving (finished,
-- failed, released, rescued, cancelled, deleted): a release is appended (imagend_owner_releases); a
-- finished row gets its cost, which the release carries to the owner's spending of the period.
CREATE OR REPLACE FUNCTION imagend_owner_moved() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT SET jit = off AS $$
DECLARE
    plan imagend_plans;
    o imagend_owners;
    tokens FLOAT8;
    period TIMESTAMPTZ;
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO imagend_owner_releases (owner, running) VALUES (OLD.owner, 1);
        RETURN OLD;
    END IF;
    IF OLD.status IN ('ReadyToPublish', 'Failed') AND NEW.status = 'ReadyToGenerate' THEN
        -- A finished row put back (docs/producers.md, "Trying again"; the API's retry): admitted as a new
        -- row is (max_waiting, budget), and a new place in the fair share after its owner's waiting rows
        -- (its old vtime would put it before everyone's).
        RETURN imagend_owner_enqueue(NEW, true);
    END IF;
    IF OLD.status = 'Generate' AND OLD.owner IS NOT NULL THEN
        -- Leaving Generate (or this owner): appended, no lock taken.
        -- A cost the finishing statement wrote itself (a video's: docs/video.md) stands.
        IF NEW.status = 'ReadyToPublish' AND NEW.owner IS NOT DISTINCT FROM OLD.owner
           AND (NEW.cost IS NULL OR NEW.cost IS NOT DISTINCT FROM OLD.cost) THEN
            NEW.cost := imagend_cost(NEW.backend, NEW.model, NEW.task, NEW.generation_seconds,
                                     NEW.width, NEW.height, NEW.steps);
        END IF;
        INSERT INTO imagend_owner_releases (owner, running, cost)
        VALUES (OLD.owner, 1, CASE WHEN NEW.status = 'ReadyToPublish' THEN COALESCE(NEW.cost, 0) ELSE 0 END);
        IF NEW.status = 'Generate' AND NEW.owner IS NOT NULL THEN  -- moved to another owner while running
            INSERT INTO imagend_owners (owner) VALUES (NEW.owner) ON CONFLICT DO NOTHING;
            INSERT INTO imagend_owner_releases (owner, running) VALUES (NEW.owner, -1);
        END IF;
        RETURN NEW;
    END IF;
    IF NEW.status <> 'Generate' OR NEW.owner IS NULL OR imagend_owner_problem(NEW.owner) IS NOT NULL THEN
        RETURN NEW;  -- an invalid owner (made so after its insert): claimed, and failed by the daemon
    END IF;
    -- Entering Generate: a claim. The counter row is locked (the claim locked its owners in order
    -- already: images_claim_batch), its releases folded in, and the row admitted or refused.
    PERFORM 1 FROM imagend_owners WHERE owner = NEW.owner FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO imagend_owners (owner) VALUES (NEW.owner) ON CONFLICT DO NOTHING;
        PERFORM 1 FROM imagend_owners WHERE owner = NEW.owner FOR UPDATE;
    END IF;
    plan := imagend_plan_of(NEW.owner);
    period := imagend_period_start(COALESCE(plan.budget_period, 'day'), now());
    o := imagend_owner_fold(NEW.owner, period);
    IF plan.max_running IS NOT NULL AND o.running >= plan.max_running THEN
        RETURN NULL;
    END IF;
    IF plan.budget IS NOT NULL AND o.spent >= plan.budget THEN
        UPDATE imagend_owners
        SET blocked_until = period + ('1 ' || plan.budget_period)::interval, blocked_reason = 'budget'
        WHERE owner = NEW.owner;
        RETURN NULL;
    END IF;
    IF plan.rate_per_minute IS NOT NULL THEN
        tokens := least(plan.rate_per_minute,
                        COALESCE(o.rate_tokens, plan.rate_per_minute)
                        + greatest(extract(epoch FROM now() - COALESCE(o.rate_at, now())), 0)
                          * plan.rate_per_minute / 60);
        IF tokens < 1 THEN
            UPDATE imagend_owners
            SET blocked_until = now() + make_interval(secs => (1 - tokens) * 60 / plan.rate_per_minute),
                blocked_reason = 'rate'
            WHERE owner = NEW.owner;
            RETURN NULL;
        END IF;
        UPDATE imagend_owners
        SET running = running + 1, rate_tokens = tokens - 1, rate_at = now(), blocked_until = NULL,
            blocked_reason = NULL
        WHERE owner = NEW.owner;
        RETURN NEW;
    END IF;
    UPDATE imagend_owners SET running = running + 1, blocked_until = NULL, blocked_reason = NULL
    WHERE owner = NEW.owner;
    RETURN NEW;
END $$;

-- One trigger for every way an owned row moves (the WHEN of one trigger is all that an anonymous row's
-- update costs). No column list: a status changed by another BEFORE trigger (a cancel's) counts too.
CREATE OR REPLACE TRIGGER images_owner_moved
    BEFORE UPDATE ON images
    FOR EACH ROW
    WHEN (COALESCE(NEW.owner, OLD.owner) IS NOT NULL
          AND ((OLD.status = 'Generate') <> (NEW.status = 'Generate')
               OR (OLD.status = 'Generate' AND OLD.owner IS DISTINCT FROM NEW.owner)
               OR (OLD.status IN ('ReadyToPublish', 'Failed') AND NEW.status = 'ReadyToGenerate')))
    EXECUTE FUNCTION imagend_owner_moved();

CREATE OR REPLACE TRIGGER images_owner_deleted
    BEFORE DELETE ON images
    FOR EACH ROW
    WHEN (OLD.status = 'Generate' AND OLD.owner IS NOT NULL)
    EXECUTE FUNCTION imagend_owner_moved();

CREATE OR REPLACE FUNCTION imagend_owners_truncated() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE imagend_owners SET running = 0 WHERE running <> 0;
    DELETE FROM imagend_owner_releases;
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER images_owners_truncated
    AFTER TRUNCATE ON images
    FOR EACH STATEMENT EXECUTE FUNCTION imagend_owners_truncated();

-- Each owner as it stands: its plan (its own, or the default's name), rows in Generate now (its counter
-- less the releases not folded yet), rows waiting. Read by `imagend -plans`, the dashboard, the API.
CREATE OR REPLACE VIEW imagend_owners_now AS
SELECT o.owner,
       COALESCE(o.plan, (SELECT p.name FROM imagend_plans AS p WHERE p.is_default)) AS plan,
       o.plan IS NULL AS default_plan,
       greatest(o.running - COALESCE((SELECT sum(r.running) FROM imagend_owner_releases AS r
                                      WHERE r.owner = o.owner), 0), 0)::int AS running,
       (SELECT count(*) FROM images AS w WHERE w.status = 'ReadyToGenerate' AND w.owner = o.owner)::int AS waiting,
       o.blocked_until
FROM imagend_owners AS o;

-- Usage per owner and day (UTC), as the image module's per-user statistics: rows done, failed and
-- cancelled, GPU seconds, cost, mean generation time. Anonymous rows are owner NULL.
CREATE OR REPLACE VIEW imagend_usage AS
SELECT i.owner,
       (i.finished_at AT TIME ZONE 'UTC')::date AS day,
       count(*) FILTER (WHERE i.status = 'ReadyToPublish') AS done,
       count(*) FILTER (WHERE i.status = 'Failed' AND i.error IS DISTINCT FROM 'cancelled') AS failed,
       count(*) FILTER (WHERE i.status = 'Failed' AND i.error = 'cancelled') AS cancelled,
       COALESCE(sum(i.generation_seconds), 0)::float8 AS gpu_seconds,
       COALESCE(sum(i.cost), 0)::float8 AS cost,
       avg(i.generation_seconds)::float8 AS avg_generation_seconds
FROM images AS i
WHERE i.status IN ('ReadyToPublish', 'Failed') AND i.finished_at IS NOT NULL
GROUP BY 1, 2;

-- Per-owner API keys (docs/owners.md, "API keys"): the key itself is shown once, at creation; stored
-- here is its SHA-256 (a key is 32 random bytes: no slow hash needed) and its prefix, which names it in
-- lists and in `imagend -key-revoke`. A revoked key answers 401 from the next request on.
CREATE TABLE IF NOT EXISTS imagend_api_keys (
    prefix       TEXT PRIMARY KEY,
    hash         TEXT NOT NULL,
    owner        TEXT NOT NULL,
    scopes       TEXT[] NOT NULL DEFAULT '{submit,read,cancel,delete}',
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at   TIMESTAMPTZ,
    CONSTRAINT imagend_api_keys_scopes_known CHECK (scopes <@ '{submit,read,cancel,delete}'::text[]),
    CONSTRAINT imagend_api_keys_owner_ok CHECK (imagend_owner_problem(owner) IS NULL)
);

COMMIT;
