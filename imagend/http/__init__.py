"""The daemon's one HTTP listener (IMAGEND_HTTP): /metrics, /healthz and /readyz, the dashboard
and the JSON API. Starlette on uvicorn, in a thread of the daemon, with its own small database pool
so that no request ever waits for (or holds) a connection the loops need."""
