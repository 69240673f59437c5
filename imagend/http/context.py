"""What every route may use, built once by the daemon (see server.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from imagend.config.settings import HttpSettings, Settings
from imagend.db.operations import OperationsRepository
from imagend.db.operations_async import AsyncOperations
from imagend.http.guards import ListenerPolicy
from imagend.operations.health import LoopHealth, ReadyCheck
from imagend.operations.metrics import QueueCollector
from imagend.storage import Store
from imagend.storage.links import Links


@dataclass(frozen=True)
class HttpContext:
    settings: Settings
    http: HttpSettings
    ops: OperationsRepository
    requests: AsyncOperations  # a request's rows in and out, on the event loop (the OpenAI and A1111 routes)
    registry: CollectorRegistry
    queue: QueueCollector
    health: LoopHealth
    ready: ReadyCheck
    served_backends: tuple[str, ...]
    store: Store | None  # the daemon's store (IMAGEND_STORAGE_URL), built once at start
    policy: ListenerPolicy  # allowed Host names, reads needing the token (guards.py)
    store_problem: Callable[[], str | None]  # None while the store takes writes, else why not (/readyz)
    links: Links  # the links a browser opens: presigned, public or signed (storage/links.py)
