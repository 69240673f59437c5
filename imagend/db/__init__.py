"""The database: connecting and the pool, the statement runner, every row type and status, the
queries of the daemon's loops and of the operator's side, and the SQL files they run."""
