"""Maintenance services run by the processor in turn, each a `run_once()` returning counts:
liveness, rescue, retention, unserved rows, and the operator's image export."""
