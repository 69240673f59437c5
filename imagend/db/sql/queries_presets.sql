-- Presets (docs/presets.md): the operator's statements (imagend -preset, -presets, -preset-delete) and the
-- daemon's two (a batch's presets read once; what a preset filled written back to its row).

-- name: presets_upsert
-- `imagend -preset NAME k=v …`: creates the preset, or changes only the values given (set_<key> true).
INSERT INTO imagend_presets AS p (name, prompt, negative_prompt, style, width, height, model, loras, steps,
                                  guidance, scheduler, n, post)
VALUES (%(name)s, %(prompt)s, %(negative_prompt)s, %(style)s, %(width)s, %(height)s, %(model)s,
        %(loras)s::jsonb, %(steps)s, %(guidance)s, %(scheduler)s, %(n)s, COALESCE(%(post)s::jsonb, '[]'))
ON CONFLICT (name) DO UPDATE
SET prompt          = CASE WHEN %(set_prompt)s THEN EXCLUDED.prompt ELSE p.prompt END,
    negative_prompt = CASE WHEN %(set_negative_prompt)s THEN EXCLUDED.negative_prompt ELSE p.negative_prompt END,
    style           = CASE WHEN %(set_style)s THEN EXCLUDED.style ELSE p.style END,
    width           = CASE WHEN %(set_width)s THEN EXCLUDED.width ELSE p.width END,
    height          = CASE WHEN %(set_height)s THEN EXCLUDED.height ELSE p.height END,
    model           = CASE WHEN %(set_model)s THEN EXCLUDED.model ELSE p.model END,
    loras           = CASE WHEN %(set_loras)s THEN EXCLUDED.loras ELSE p.loras END,
    steps           = CASE WHEN %(set_steps)s THEN EXCLUDED.steps ELSE p.steps END,
    guidance        = CASE WHEN %(set_guidance)s THEN EXCLUDED.guidance ELSE p.guidance END,
    scheduler       = CASE WHEN %(set_scheduler)s THEN EXCLUDED.scheduler ELSE p.scheduler END,
    n               = CASE WHEN %(set_n)s THEN EXCLUDED.n ELSE p.n END,
    post            = CASE WHEN %(set_post)s THEN EXCLUDED.post ELSE p.post END,
    updated_at      = now()
RETURNING name;

-- name: presets_delete
-- Rows naming it afterwards end Failed (unknown preset); rows already made keep what it wrote back.
DELETE FROM imagend_presets WHERE name = %(name)s RETURNING name;

-- name: presets_list
-- `imagend -presets`: every preset, loras and post as JSON.
SELECT name, prompt, negative_prompt, style, width, height, model, loras, steps, guidance, scheduler, n, post,
       created_at, updated_at
FROM imagend_presets
ORDER BY name;

-- name: presets_get
-- The presets a claimed batch's rows name (one read per batch that names any); JSON as text, read per row.
SELECT name, prompt, negative_prompt, style, width, height, model, loras::text AS loras, steps, guidance,
       scheduler, n, post::text AS post
FROM imagend_presets
WHERE name = ANY (%(names)s::text[]);

-- name: images_apply_preset
-- What the row's preset filled, written back where the row left the column NULL (what the producer wrote
-- stays), and the expanded prompt; fenced by the claim like every write of a claimed row.
UPDATE images AS i
SET negative_prompt  = COALESCE(i.negative_prompt, %(negative_prompt)s),
    style            = COALESCE(i.style, %(style)s),
    width            = COALESCE(i.width, %(width)s),
    height           = COALESCE(i.height, %(height)s),
    model            = COALESCE(i.model, %(model)s),
    loras            = COALESCE(i.loras, %(loras)s::jsonb),
    steps            = COALESCE(i.steps, %(steps)s),
    guidance         = COALESCE(i.guidance, %(guidance)s),
    scheduler        = COALESCE(i.scheduler, %(scheduler)s),
    n                = COALESCE(i.n, %(n)s),
    effective_prompt = %(effective_prompt)s
WHERE i.id = %(id)s
  AND i.status = 'Generate'
  AND i.locked_by = %(owner)s
  AND i.attempts = %(attempt)s
RETURNING i.id;
