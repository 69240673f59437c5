"""The generator pass: claim waiting rows, check them, then generate (local backends) or
submit (remote backends). Loops until nothing is left to claim, the daemon stops, or the
processor falls due (then it returns early with `more` set, and the pacer runs it again).

A claimed row is only *begun* (imagend_daemons.working) right before work on it starts: a
row claimed ahead or waiting its turn in a batch goes back uncharged if this daemon dies."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import groupby

from imagend.backends.base import Backend, GeneratingBackend, Image, RemoteBackend, Request
from imagend.config.settings import Settings
from imagend.db.repository import Repository
from imagend.db.rows import Claim, ClaimedRow, Status
from imagend.db.videos import VideoRepository
from imagend.errors import (
    BadInput,
    Cancelled,
    DatabaseUnavailable,
    Interrupted,
    LostOwnership,
    QueueClosed,
    RetryableError,
    RowError,
    RowLocked,
    unexpected,
)
from imagend.logs import get_logger
from imagend.operations.metrics import Metrics
from imagend.presets.recipes import preset_names
from imagend.presets.recipes import resolve as resolve_preset
from imagend.queue.finishing import Outcomes
from imagend.queue.leases import LeaseKeeper
from imagend.queue.pass_counts import PassCounts
from imagend.queue.validation import validate_row
from imagend.queue.videos import VIDEO_TASK, Videos
from imagend.storage import Store
from imagend.storage.health import StoreHealth
from imagend.video.settings import VideoSettings, load_video_settings

log = get_logger()

# Finishing writes of earlier batches in flight while the next batch generates: with two, a
# fast backend never waits for the database to finish the batch before last.
FINISHING_IN_FLIGHT = 2


def batch_key(request: Request) -> Hashable:
    """Rows with the same key can share one pipeline call."""
    return (request.width, request.height, request.steps, request.guidance, request.scheduler,
            request.inputs.batch_key(request.id))


class Generator:
    def __init__(
        self,
        repo: Repository,
        backends: Mapping[str, Backend],
        settings: Settings,
        *,
        stopping: threading.Event,
        aborting: threading.Event,
        wake: threading.Event,
        io_pool: ThreadPoolExecutor,
        processor_due: Callable[[], bool] = lambda: False,
        metrics: Metrics | None = None,
        progressed: Callable[[], None] = lambda: None,
        store: Store | None = None,
        store_health: StoreHealth | None = None,
        video: VideoSettings | None = None,
    ) -> None:
        self.repo = repo
        self.backends = backends
        self.settings = settings
        self.stopping = stopping
        self.aborting = aborting
        self.wake = wake
        self.io_pool = io_pool
        self.processor_due = processor_due
        self.metrics = metrics or Metrics()
        self.progressed = progressed  # the loop made progress (health.py): each batch, each lease renewal
        self.store = store
        self.store_health = store_health or StoreHealth()
        self.outcomes = Outcomes(repo, settings, self.metrics, store, self.store_health)
        # Video rows (task 'video', queue/videos.py): their storyboard and scene rows, then their composition.
        self.videos = Videos(repo, VideoRepository(repo.pool, repo.owner, lease_seconds=repo.lease_seconds),
                             settings, video or load_video_settings(settings.env, settings.data_dir), self.outcomes,
                             store, aborting=aborting, progressed=progressed)
        # The writes that end earlier batches run while the next one is claimed and generated; at
        # most FINISHING_IN_FLIGHT at once, and a pass waits for them before it returns.
        self._finishing: deque[Future[PassCounts]] = deque()
        # The next batch of a generating backend is claimed while this one generates, so the
        # claim's round trip is hidden behind the GPU work (its rows' leases ride on the heartbeat).
        # Kept across a pass that returns early for the processor.
        self._claimed_ahead: dict[str, Future[list[ClaimedRow]]] = {}

    def run_once(self) -> PassCounts:
        counts = PassCounts()
        try:
            self._claim_until_empty(counts)
        finally:
            if not counts.more or self.stopping.is_set():
                self._release_claimed_ahead(counts)
            self._wait_for_finishing(counts)
        return counts

    def _claim_until_empty(self, counts: PassCounts) -> None:
        exhausted: set[str] = set()  # backends whose claim came back empty: no new rows until a wake-up
        while not self.stopping.is_set():
            # Cleared before the claim: a NOTIFY that arrives after it makes us look again.
            if self.wake.is_set():
                self.wake.clear()
                exhausted.clear()
            claimed_any = False
            self.progressed()
            for name, backend in self.backends.items():
                if self.stopping.is_set():
                    break
                if not self.store_health.ok:  # an image made now could only be spooled: wait for the store
                    log.info("claiming_paused", reason="the store refuses writes", error=self.store_health.error)
                    return
                if name in exhausted:
                    continue
                ahead = self._claimed_ahead.pop(name, None)
                rows = ahead.result() if ahead is not None else []
                if not rows:  # a claim ahead that found nothing leaves the daemon busy: this one says idle
                    rows = self._claim(name, backend)
                if not rows:
                    exhausted.add(name)
                    continue
                claimed_any = True
                counts.claimed += len(rows)
                self.metrics.claimed_rows(name, (row.waited_seconds for row in rows))
                videos = [row for row in rows if row.task == VIDEO_TASK]
                if videos:  # the images of the batch first (their leases are kept while they wait), then these
                    rows = [row for row in rows if row.task != VIDEO_TASK]
                requests = self._validate(backend, rows, counts) if rows else []
                if isinstance(backend, RemoteBackend):
                    self._submit(backend, requests, counts)
                else:
                    assert isinstance(backend, GeneratingBackend)
                    # Claimed ahead while this batch generates, when a full batch says more may wait (a
                    # drain): at a trickle it would be one more claim per row, finding nothing.
                    if not self.stopping.is_set() and len(rows) >= backend.max_batch > 1:
                        self._claimed_ahead[name] = self.io_pool.submit(self._claim, name, backend, ahead=True)
                    self._generate_all(backend, requests, counts)
                for video in videos:
                    if self.stopping.is_set():
                        self.outcomes.release(name, [video.id], counts)
                        continue
                    self.videos.run(name, video, counts)
                if self.processor_due():
                    counts.more = True
                    return
            if not claimed_any and not self.wake.is_set():
                break

    def _claim(self, name: str, backend: Backend, *, ahead: bool = False) -> list[ClaimedRow]:
        """`ahead`: claimed while a batch generates, so finding nothing does not make the daemon idle."""
        return self.repo.claim_batch(name, backend.max_batch, prefer=backend.claim_preference(), mark_idle=not ahead)

    def _validate(self, backend: Backend, rows: Sequence[ClaimedRow], counts: PassCounts) -> list[Request]:
        requests = []
        failures: list[tuple[Claim, RowError]] = []  # ended in one write (a burst of bad rows is one statement)
        source_ids = {source for row in rows for source in row.source_ids}
        sources = self.repo.source_rows(sorted(source_ids)) if source_ids else {}
        store = self.store
        names = preset_names(rows)  # presets (presets/recipes.py): one read for the batch, when a row names one
        presets = self.repo.presets(names) if names else {}
        for row in rows:
            if row.cancel_requested:  # cancelled while it waited: nothing to start
                failures.append((row.claim, Cancelled()))
                continue
            try:
                resolved = resolve_preset(row, presets)
                validated = validate_row(resolved.row, self.settings, sources, store.read_url if store else None,
                                         self.repo.input_image)
                request = validated.request
                if resolved.post:
                    request = dataclasses.replace(request, post=resolved.post)
                request = backend.validate(request)
            except BadInput as exc:
                failures.append((row.claim, exc))
                continue
            if resolved.written is not None:  # what the preset filled, written back to the row
                with contextlib.suppress(RowLocked):
                    self.repo.apply_preset(row.claim, resolved.written)
            warning = "; ".join(filter(None, (validated.warning, *request.notes)))
            if warning:
                with contextlib.suppress(RowLocked):  # a producer holds the row: the warning waits for no one
                    self.repo.set_warning(row.id, warning)
            requests.append(request)
        self.outcomes.fail_all(backend.name, failures, counts)
        return requests

    def _begin(self, batch: Sequence[Request]) -> None:
        """Mark `batch` begun (see images_begin_work). A row cancelled or lost since its claim is
        heard at the batch's first lease renewal (LeaseKeeper)."""
        self.repo.begin_work([r.id for r in batch])

    def _generate_all(self, backend: GeneratingBackend, requests: list[Request], counts: PassCounts) -> None:
        requests.sort(key=lambda r: (repr(batch_key(r)), r.id))
        groups = [list(group) for _, group in groupby(requests, key=batch_key)]
        chunks = [chunk for group in groups for chunk in image_chunks(group, backend.max_batch)]
        for index, chunk in enumerate(chunks):
            if self.stopping.is_set():
                self.outcomes.release(backend.name, [r.id for r in requests_of(chunks[index:])], counts)
                return
            waiting = [r.id for r in requests_of(chunks[index + 1 :])]
            self._begin(chunk)
            self._generate(backend, chunk, waiting, counts)

    def _generate(
        self, backend: GeneratingBackend, batch: list[Request], waiting: list[int], counts: PassCounts
    ) -> None:
        if not batch:
            return
        ids = [r.id for r in batch]
        claims = {r.id: r.claim for r in batch}

        def end_cancelled(image_id: int) -> None:
            self.outcomes.fail_all(backend.name, [(claims[image_id], Cancelled())], counts)

        keeper = LeaseKeeper(self.repo, ids, self.aborting, held=lambda: [*waiting, *self._held_ahead()],
                             progressed=self.progressed, end_cancelled=end_cancelled,
                             preview_seconds=self.settings.preview_seconds)
        log.debug("batch_started", ids=ids, status=Status.GENERATE, backend=backend.name)
        in_flight = self.metrics.in_flight.labels(backend.name)
        in_flight.set(len(batch))
        try:
            with keeper.watching(self.settings.generation_timeout_seconds * sum(r.n for r in batch)):
                images = backend.generate(batch, keeper)
            if keeper.ended_early:  # cancelled during a long step: already Failed, by the watch
                keeper.cancelled = set(keeper.ended_early)
                raise Cancelled()
            if len(images) != len(batch):
                raise RetryableError(f"backend {backend.name} returned {len(images)} images for {len(batch)} rows")
        except Cancelled:
            cancelled = keeper.cancelled or set(ids)
            for request in batch:
                if request.id in keeper.ended_early:
                    continue  # ended by the watch as the cancel came
                if request.id in cancelled:
                    self.outcomes.fail(backend.name, request.claim, Cancelled(), counts)
            self.outcomes.release(backend.name, [i for i in ids if i not in cancelled], counts, reason=None)
        except Interrupted as exc:
            log.info("batch_interrupted", ids=ids, reason=str(exc))
            self.outcomes.release(backend.name, ids, counts)
        except RowError as exc:
            for request in batch:
                self.outcomes.fail(backend.name, request.claim, exc, counts)
        except DatabaseUnavailable:
            raise
        except Exception as exc:  # a bug or an unexpected library error: the row gets another attempt
            log.exception("backend_error", ids=ids, backend=backend.name)
            for request in batch:
                self.outcomes.fail(backend.name, request.claim, unexpected(backend.name, exc), counts)
        else:
            self._finish_in_background(
                backend.name, [(r.claim, image) for r, image in zip(batch, images, strict=True)], counts
            )
        finally:
            in_flight.set(0)

    def _finish_in_background(self, backend: str, results: list[tuple[Claim, Image]], counts: PassCounts) -> None:
        while len(self._finishing) >= FINISHING_IN_FLIGHT:
            counts.merge(self._finishing.popleft().result())

        def finish() -> PassCounts:
            own = PassCounts()
            self.outcomes.done(backend, results, own)
            return own

        self._finishing.append(self.io_pool.submit(finish))

    def _held_ahead(self) -> list[int]:
        return [
            row.id
            for ahead in self._claimed_ahead.values()
            if ahead.done() and ahead.exception() is None
            for row in ahead.result()
        ]

    def _release_claimed_ahead(self, counts: PassCounts) -> None:
        """Rows claimed ahead but not reached (the daemon is stopping): back to the queue, attempt not counted."""
        for name, ahead in self._claimed_ahead.items():
            try:
                rows = ahead.result()
            except DatabaseUnavailable:
                continue  # their leases (or this daemon's liveness) will bring them back
            self.outcomes.release(name, [row.id for row in rows], counts)
        self._claimed_ahead.clear()

    def _wait_for_finishing(self, counts: PassCounts) -> None:
        while self._finishing:
            counts.merge(self._finishing.popleft().result())

    def _submit(self, backend: RemoteBackend, requests: list[Request], counts: PassCounts) -> None:
        if not requests:
            return
        self._begin(requests)

        def submit_one(request: Request) -> PassCounts:
            counts = PassCounts()  # one per thread, merged below
            self._submit_one(backend, request, counts)
            return counts

        for one in self.io_pool.map(submit_one, requests):
            counts.merge(one)

    def _submit_one(self, backend: RemoteBackend, request: Request, counts: PassCounts) -> None:
        if self.stopping.is_set():
            self.outcomes.release(backend.name, [request.id], counts)
            return
        try:
            submission = backend.submit(request)
        except QueueClosed as exc:
            self.outcomes.release(backend.name, [request.id], counts, delay_seconds=exc.retry_after_seconds,
                                  reason=str(exc))
            return
        except RowError as exc:
            self.outcomes.fail(backend.name, request.claim, exc, counts)
            return
        except Exception as exc:
            log.exception("backend_error", id=request.id, backend=backend.name)
            self.outcomes.fail(backend.name, request.claim, unexpected(backend.name, exc), counts)
            return
        try:
            self.repo.mark_submitted(request.claim, submission.task_id, submission.poll_after_seconds)
        except (LostOwnership, RowLocked):
            counts.lost += 1
            log.warning("submission_dropped", id=request.id, attempt=request.attempt)
            return
        counts.submitted += 1
        log.debug("image_submitted", id=request.id, status=Status.GENERATE, attempt=request.attempt)


def image_chunks(group: Sequence[Request], size: int) -> list[list[Request]]:
    """A group's rows in pipeline calls of at most `size` images (IMAGEND_MAX_BATCH): a row's n counts, and a
    row of more than `size` images is a call of its own."""
    chunks: list[list[Request]] = []
    images = 0
    for request in group:
        if chunks and images + request.n <= size:
            chunks[-1].append(request)
            images += request.n
        else:
            chunks.append([request])
            images = request.n
    return chunks


def requests_of(groups: Sequence[Sequence[Request]]) -> list[Request]:
    return [request for group in groups for request in group]
