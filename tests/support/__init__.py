"""Helpers the tests share, imported as `support.<module>` (pytest puts tests/ on sys.path):
`db` (rows, environment, audit, waiting), `daemons` (imagend in a subprocess or in process),
`fusionbrain` and `local` (per-backend helpers), `pgbouncer` (a real PgBouncer for the session)."""
