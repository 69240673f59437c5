"""Webhooks (issue 23; docs/operations.md, "Webhooks"): a row naming a `callback_url` that ends gets an
event in the outbox (imagend_webhooks, filled by a trigger in the transaction of its end); each daemon's
webhook thread (delivery.py) claims due events and POSTs them, signed (signing.py), to targets the SSRF
guard lets through (targets.py)."""
