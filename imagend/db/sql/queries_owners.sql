-- Owners, plans, usage and per-owner API keys (schema_owners.sql, docs/owners.md): the operator's
-- statements (`imagend -plan/-assign/-plans/-key-create/-key-revoke`) and the API's (an owner's key:
-- its rows only). `owner` here is always the customer (images.owner), never a daemon.

-- name: plans_clear_default
-- Before a plan is made the default, in its transaction: the flag leaves any other plan (one default).
UPDATE imagend_plans SET is_default = false, updated_at = now() WHERE is_default AND name <> %(name)s;

-- name: plans_upsert
-- `imagend -plan NAME k=v …`: creates the plan, or changes only the values given (set_<name> true).
INSERT INTO imagend_plans AS p (name, max_running, weight, max_waiting, rate_per_minute, budget, budget_period,
                                is_default)
VALUES (%(name)s, %(max_running)s, COALESCE(%(weight)s, 1), %(max_waiting)s, %(rate_per_minute)s, %(budget)s,
        COALESCE(%(budget_period)s, 'day'), COALESCE(%(is_default)s, false))
ON CONFLICT (name) DO UPDATE
SET max_running     = CASE WHEN %(set_max_running)s THEN EXCLUDED.max_running ELSE p.max_running END,
    weight          = CASE WHEN %(set_weight)s THEN EXCLUDED.weight ELSE p.weight END,
    max_waiting     = CASE WHEN %(set_max_waiting)s THEN EXCLUDED.max_waiting ELSE p.max_waiting END,
    rate_per_minute = CASE WHEN %(set_rate_per_minute)s THEN EXCLUDED.rate_per_minute ELSE p.rate_per_minute END,
    budget          = CASE WHEN %(set_budget)s THEN EXCLUDED.budget ELSE p.budget END,
    budget_period   = CASE WHEN %(set_budget_period)s THEN EXCLUDED.budget_period ELSE p.budget_period END,
    is_default      = CASE WHEN %(set_is_default)s THEN EXCLUDED.is_default ELSE p.is_default END,
    updated_at      = now()
RETURNING name;

-- name: plans_delete
-- Its owners fall back to the default plan (imagend_owners.plan ON DELETE SET NULL).
DELETE FROM imagend_plans WHERE name = %(name)s RETURNING name;

-- name: plans_list
-- `imagend -plans`, `-status`, the dashboard: every plan with its owners' rows running and waiting.
SELECT p.name, p.max_running, p.weight, p.max_waiting, p.rate_per_minute, p.budget, p.budget_period, p.is_default,
       (SELECT count(*) FROM imagend_owners_now AS o WHERE o.plan = p.name)::int AS owners,
       (SELECT COALESCE(sum(o.running), 0) FROM imagend_owners_now AS o WHERE o.plan = p.name)::int AS running,
       (SELECT COALESCE(sum(o.waiting), 0) FROM imagend_owners_now AS o WHERE o.plan = p.name)::int AS waiting
FROM imagend_plans AS p
ORDER BY p.name;

-- name: owners_assign
-- `imagend -assign OWNER PLAN` ('-' or '' for the default plan). Returns the owner; an unknown plan is a
-- foreign-key error the caller words.
INSERT INTO imagend_owners AS o (owner, plan) VALUES (%(owner)s, %(plan)s)
ON CONFLICT (owner) DO UPDATE SET plan = EXCLUDED.plan
RETURNING o.owner;

-- name: owners_top
-- The dashboard: the owners with the most rows waiting or running (a top-N, never all of them), their plan
-- and today's usage (UTC).
SELECT o.owner, o.plan, o.running, o.waiting,
       COALESCE(u.done, 0)::int AS done_today, COALESCE(u.failed, 0)::int AS failed_today,
       COALESCE(u.cost, 0)::float8 AS cost_today
FROM imagend_owners_now AS o
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE i.status = 'ReadyToPublish') AS done,
           count(*) FILTER (WHERE i.status = 'Failed') AS failed,
           sum(i.cost) AS cost
    FROM images AS i
    WHERE i.owner = o.owner AND i.owner IS NOT NULL
      AND i.status IN ('ReadyToPublish', 'Failed')
      AND i.finished_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
) AS u ON true
WHERE o.running > 0 OR o.waiting > 0
ORDER BY o.running + o.waiting DESC, o.owner
LIMIT %(limit)s;

-- name: owners_usage
-- Usage of one owner per day (UTC), newest first: GET /v1/usage with an owner's key.
SELECT day, done::int, failed::int, cancelled::int, gpu_seconds, cost, avg_generation_seconds
FROM imagend_usage
WHERE owner = %(owner)s
ORDER BY day DESC
LIMIT %(days)s;

-- name: keys_create
INSERT INTO imagend_api_keys (prefix, hash, owner, scopes) VALUES (%(prefix)s, %(hash)s, %(owner)s, %(scopes)s)
RETURNING prefix;

-- name: keys_revoke
-- By the whole key (its hash) or by its prefix; returns what was revoked.
UPDATE imagend_api_keys
SET revoked_at = now()
WHERE (hash = %(hash)s OR prefix = %(prefix)s) AND revoked_at IS NULL
RETURNING prefix, owner;

-- name: keys_lookup
-- Every request with a key that is not the operator's token: looked up each time (no cache), so a revoked
-- key is refused from the next request on.
SELECT owner, scopes, hash FROM imagend_api_keys WHERE prefix = %(prefix)s AND revoked_at IS NULL;

-- name: images_owner_of
-- Whose row is it (an owner's key sees only its own: 404 for any other). No row: nothing.
SELECT owner FROM images WHERE id = %(id)s;

-- name: images_list_owned
-- GET /v1/images with an owner's key: that owner's rows, newest first, after a cursor (the last id seen),
-- optionally of one status. Served by images_owner_id_idx.
SELECT id, status, prompt, error, progress, created_at, finished_at, cost, output_url, thumbnail_url
FROM images
WHERE owner = %(owner)s
  AND (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(before)s::int IS NULL OR id < %(before)s)
ORDER BY owner, id DESC
LIMIT %(limit)s;

-- name: images_delete
-- DELETE /v1/images/{id}: the row (any status; a running one's daemon loses it at its next lease renewal
-- and drops its result), returning where its image and thumbnail are stored so that the caller deletes
-- them. Guarded by the owner when the caller is an owner's key.
DELETE FROM images
WHERE id = %(id)s AND (%(owner)s::text IS NULL OR owner = %(owner)s)
RETURNING id, output_url, thumbnail_url, output_path;

-- name: images_refused_at_insert
-- POST /v1/images: whether the owner's plan refused the row it just inserted (max_waiting, budget: the
-- insert trigger ended it Failed with the reason). A refused row is deleted (the API answers 429 or 402,
-- and the producer sends it again later): no row is left behind for a request that was refused.
DELETE FROM images
WHERE id = %(id)s AND status = 'Failed' AND owner IS NOT NULL
  AND error ~ '^owner .* (already has [0-9]+ rows waiting|is over its plan)'
RETURNING error, error ~ '^owner .* already has [0-9]+ rows waiting' AS waiting_full;

-- name: images_fail_over_budget
-- Every processor pass: waiting rows of owners over their plan's budget (found so by a claim, which left
-- them waiting) end Failed with the reason, up to 1,000 a pass. A running row is never touched: it is
-- charged when it ends (never half-charged). No owner over budget: an empty index read.
WITH over AS (
    SELECT o.owner, p.name AS plan, p.budget, p.budget_period, o.spent
    FROM imagend_owners AS o
    JOIN imagend_plans AS p ON p.name = o.plan OR (o.plan IS NULL AND p.is_default)
    WHERE (o.running > 0 OR o.blocked_until IS NOT NULL)
      AND o.blocked_until > now() AND o.blocked_reason = 'budget'
), picked AS (
    SELECT w.id, over.owner, over.plan, over.budget, over.budget_period, over.spent
    FROM over
    JOIN images AS w ON w.owner = over.owner AND w.status = 'ReadyToGenerate'
    LIMIT 1000
    FOR UPDATE OF w SKIP LOCKED
)
UPDATE images AS i
SET status      = 'Failed',
    error       = format('owner %%s is over its plan %%s''s budget: %%s of %%s cost units spent this %%s',
                         picked.owner, picked.plan, round(picked.spent::numeric, 2), picked.budget,
                         picked.budget_period),
    finished_at = now()
FROM picked
WHERE i.id = picked.id AND i.status = 'ReadyToGenerate'
RETURNING i.id;
