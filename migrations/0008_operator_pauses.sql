-- vecmirror schema, version 8: an operator's pause of a mirror (`vecmirror pause` / `resume`).
-- Released: never edit this file; add 0009_*.sql instead.

-- Set by `vecmirror pause MIRROR [--reason TEXT]`, cleared by `vecmirror resume MIRROR`. While set,
-- capture keeps queueing (the triggers are untouched) and every worker leaves the mirror's queue
-- alone; the other mirrors keep syncing. Kept apart from `error` (0004), which a worker sets and
-- clears on its own: a batch that syncs never ends an operator's pause.
-- No GRANT: privileges held on mirrors_v1 cover its new columns (the worker reads them; whoever
-- runs `pause` needs UPDATE on mirrors_v1, as `migrate` does).
ALTER TABLE vecmirror.mirrors_v1
    ADD COLUMN operator_paused_at     timestamptz,
    ADD COLUMN operator_pause_reason  text;
