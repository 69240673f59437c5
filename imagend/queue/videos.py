"""Video rows in the generator's pass (docs/video.md). A claimed row with task = 'video' is one of:

- new: its storyboard is checked (or written by the script endpoint, video/script.py), its background
  audio and narration checked, then one image row per scene is inserted and the video parked until they
  end (db/sql/schema_video.sql), all before any GPU time is spent;
- its scenes ended: a failed scene fails it, naming the scene; otherwise it is composed (narration,
  ffmpeg render with progress, poster) and its MP4 and poster stored, the row finished with their URLs.

Scene rows are ordinary image rows: every daemon serving the backend makes them, in parallel. A daemon
that dies while composing leaves the video to the rescue; the next claim composes again from the
scenes' stored images, which are not made again. A cancel stops ffmpeg within CANCEL_CHECK_SECONDS
plus a lease write, and what was stored is deleted."""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from PIL import Image as PILImage
from PIL import ImageOps

from imagend.config.settings import Settings
from imagend.db.repository import Repository
from imagend.db.rows import ClaimedRow, Status
from imagend.db.videos import SceneRow, VideoRepository, VideoRow
from imagend.errors import (
    BadInput,
    Cancelled,
    DatabaseUnavailable,
    Interrupted,
    LostOwnership,
    RowError,
    RowLocked,
    clip,
    unexpected,
)
from imagend.logs import get_logger
from imagend.queue.finishing import Outcomes
from imagend.queue.pass_counts import PassCounts
from imagend.storage import Store, StoredObject, StoreUnavailable
from imagend.storage.files import FileStore
from imagend.storage.target import StorageTarget
from imagend.video.compose import Render, build_command, probe_audio, run_ffmpeg, write_srt
from imagend.video.narration import require_espeak, synthesise
from imagend.video.presets import PRESETS, STILL_SIZES, aspect_of, frame_size, preset_of, video_cost
from imagend.video.script import write_storyboard
from imagend.video.settings import VideoSettings
from imagend.video.storyboard import Scene, parse_storyboard, storyboard_json

log = get_logger()

VIDEO_TASK = "video"
PHASE_WRITE_SECONDS = 0.5  # a composing video's lease, progress and cancel check, at most this often
POSTER_QUALITY = 88
ERROR_ECHO_CHARS = 160
# Progress: the scenes are the first half (schema_video.sql), then narration, render and upload.
PROGRESS_NARRATION, PROGRESS_RENDER, PROGRESS_RENDER_SPAN, PROGRESS_UPLOAD = 0.5, 0.55, 0.4, 0.96


def video_object_names(video_id: int) -> tuple[str, str]:
    """The MP4's and the poster's names in the store (`<id>.mp4`, `<id>.poster.jpg`)."""
    return f"{video_id}.mp4", f"{video_id}.poster.jpg"


def default_video_store(folder: Path) -> Store:
    """Where videos go when IMAGEND_STORAGE_URL is unset: a folder (IMAGEND_VIDEO_DIR, default
    <IMAGEND_DATA_DIR>/videos), never the row."""
    folder.mkdir(parents=True, exist_ok=True)
    return FileStore(StorageTarget("file", "IMAGEND_VIDEO_DIR", "file://" + quote(str(folder)), folder=folder))


class Videos:
    def __init__(self, repo: Repository, videos: VideoRepository, settings: Settings, video: VideoSettings,
                 outcomes: Outcomes, store: Store | None, *, aborting: threading.Event,
                 progressed: Callable[[], None] = lambda: None) -> None:
        self.repo = repo
        self.videos = videos
        self.settings = settings
        self.video = video
        self.outcomes = outcomes
        self.store = store
        self.aborting = aborting
        self.progressed = progressed
        self._own_store: Store | None = None

    @property
    def target(self) -> Store:
        if self.store is not None:
            return self.store
        if self._own_store is None:
            assert self.video.folder is not None
            self._own_store = default_video_store(self.video.folder)
        return self._own_store

    # -- one claimed video row -----------------------------------------------------------------

    def run(self, backend: str, row: ClaimedRow, counts: PassCounts) -> None:
        claim = row.claim
        try:
            if row.cancel_requested:
                raise Cancelled()
            video = self.videos.row(row.id)
            if video is None:
                return  # deleted since its claim
            scenes = self.videos.scenes(row.id)
            if not scenes:
                self._expand(row, video)
                counts.released += 1
                return
            running = [scene for scene in scenes if scene.status not in (Status.READY_TO_PUBLISH, Status.FAILED)]
            failed = [scene for scene in scenes if scene.status == Status.FAILED]
            if failed:
                first = failed[0]
                raise BadInput(f"scene {first.scene_index} (row {first.id}) failed: "
                               f"{clip(first.error or 'no reason given', ERROR_ECHO_CHARS)}")
            if running:
                self.videos.park(claim)
                counts.released += 1
                return
            self.repo.begin_work([row.id])
            self._compose(row, video, scenes, counts)
        except Cancelled as exc:
            self.outcomes.fail(backend, claim, exc, counts, retryable=False)
        except Interrupted as exc:
            log.info("video_interrupted", id=row.id, reason=str(exc))
            self.outcomes.release(backend, [row.id], counts)
        except RowError as exc:
            self.outcomes.fail(backend, claim, exc, counts)
        except (LostOwnership, RowLocked):
            counts.lost += 1
            log.warning("video_dropped", id=row.id, attempt=claim.attempt, reason="the row is no longer ours")
        except DatabaseUnavailable:
            raise
        except Exception as exc:  # a bug or an unexpected library error: another attempt
            log.exception("video_error", id=row.id)
            self.outcomes.fail(backend, claim, unexpected("video", exc), counts)

    def _storyboard(self, row: ClaimedRow, video: VideoRow) -> list[Scene]:
        if video.scenes is not None:
            return parse_storyboard(video.scenes, max_seconds=self.video.max_seconds)
        idea = (video.prompt or "").strip()
        if self.video.script_url is None or self.video.script_model is None:
            raise BadInput("scenes is NULL and no script endpoint is configured: give the scenes, or set "
                           "IMAGEND_SCRIPT_URL and IMAGEND_SCRIPT_MODEL so the daemon writes them from the prompt")
        if not idea:
            raise BadInput("scenes is NULL and prompt is empty: give the scenes, or the idea in prompt")
        key = self.video.script_api_key.reveal() if self.video.script_api_key else None
        scenes = write_storyboard(idea, url=self.video.script_url, model=self.video.script_model, api_key=key,
                                  timeout_seconds=self.video.script_timeout_seconds,
                                  max_seconds=self.video.max_seconds)
        self.videos.set_scenes(row.claim, storyboard_json(scenes))
        log.info("video_script_written", id=row.id, scenes=len(scenes))
        return scenes

    def _check_background(self, video: VideoRow, folder: Path | None = None) -> Path | None:
        if not video.background_audio_chars:
            return None
        if video.background_audio_chars * 3 // 4 > self.video.background_max_bytes:
            raise BadInput(f"background_audio is about {video.background_audio_chars * 3 // 4:,} bytes; at most "
                           f"{self.video.background_max_bytes:,} (IMAGEND_VIDEO_BACKGROUND_MAX_BYTES)")
        text = self.videos.background_audio(video.id) or ""
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise BadInput("background_audio is not base64") from None
        with contextlib.ExitStack() as stack:
            where = folder or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="imagend-audio-")))
            path = where / "background.audio"
            path.write_bytes(data)
            probe_audio(self.video.ffmpeg_path(), path)
            return path if folder is not None else None

    def _expand(self, row: ClaimedRow, video: VideoRow) -> None:
        """Everything that can be known before a scene is made, then the scene rows (one statement)."""
        preset = preset_of(video.video_preset)
        aspect = aspect_of(video.aspect)
        self._check_background(video)
        scenes = self._storyboard(row, video)
        if any(scene.narration for scene in scenes):
            require_espeak()
        if (video.width is None) != (video.height is None):
            raise BadInput("a video's width and height (its scene stills' size) go together: set both or neither")
        size = (video.width, video.height) if video.width and video.height else STILL_SIZES[aspect]
        seconds = sum(scene.seconds for scene in scenes)
        self._check_plan(row.id, preset.name, seconds)
        cost = video_cost(seconds, preset, self.video.cost_per_second, self.video.cost_multipliers)
        ids = self.videos.expand(row.claim, [scene.prompt for scene in scenes], size, seconds=seconds, cost=cost)
        log.info("video_scenes_queued", id=row.id, scenes=len(ids), seconds=seconds, preset=preset.name)

    def _check_plan(self, video_id: int, preset: str, seconds: float) -> None:
        """The owner's plan's video limits (max_video_seconds, max_video_preset), if it has any."""
        limits = self.videos.plan_limits(video_id)
        if limits is None:
            return
        plan, max_seconds, max_preset = limits
        if max_seconds is not None and seconds > max_seconds + 1e-9:
            raise BadInput(f"the scenes last {seconds:g} s; the owner's plan {plan} allows videos of at most "
                           f"{max_seconds:g} s")
        if max_preset is not None and max_preset in PRESETS and list(PRESETS).index(preset) > list(PRESETS).index(
                max_preset):
            raise BadInput(f"video_preset {preset} is above what the owner's plan {plan} allows: at most {max_preset}")

    # -- composing ---------------------------------------------------------------------------

    def _still(self, scene: SceneRow) -> bytes:
        if scene.base64:
            try:
                return base64.b64decode(scene.base64, validate=False)
            except (binascii.Error, ValueError):
                raise BadInput(f"scene {scene.scene_index} (row {scene.id}): its base64 cannot be decoded") from None
        if scene.output_path:
            with contextlib.suppress(OSError):
                return Path(scene.output_path).read_bytes()
        if scene.output_url:
            try:
                return self.target.read_url(scene.output_url)
            except Exception as exc:
                raise BadInput(f"scene {scene.scene_index} (row {scene.id}): its stored image cannot be read "
                               f"({type(exc).__name__})") from None
        raise BadInput(f"scene {scene.scene_index} (row {scene.id}) has no image left (removed by retention?)")

    def _compose(self, row: ClaimedRow, video: VideoRow, scene_rows: list[SceneRow], counts: PassCounts) -> None:
        claim = row.claim
        started = time.monotonic()
        preset = preset_of(video.video_preset)
        aspect = aspect_of(video.aspect)
        size = frame_size(preset, aspect)
        scenes = parse_storyboard(video.scenes, max_seconds=self.video.max_seconds)
        if len(scenes) != len(scene_rows):
            raise BadInput(f"the storyboard has {len(scenes)} scenes but {len(scene_rows)} scene rows exist; "
                           "insert the video again")
        last_write = [0.0]
        cancelled = [False]

        def phase(name: str, progress: float | None, *, force: bool = False) -> None:
            if self.aborting.is_set():
                raise Interrupted("daemon stopping")
            self.progressed()
            now = time.monotonic()
            if not force and now - last_write[0] < PHASE_WRITE_SECONDS:
                return
            last_write[0] = now
            try:
                cancelled[0] = self.videos.set_phase(claim, name, progress) or cancelled[0]
            except DatabaseUnavailable:
                log.warning("lease_not_extended", ids=[row.id], reason="database unavailable")
            if cancelled[0]:
                raise Cancelled()

        with tempfile.TemporaryDirectory(prefix=f"imagend-video-{row.id}-") as tmp:
            folder = Path(tmp)
            phase("narration", PROGRESS_NARRATION, force=True)
            stills = []
            for index, scene_row in enumerate(scene_rows):
                path = folder / f"scene{index:03d}.png"
                path.write_bytes(self._still(scene_row))
                stills.append(path)
            narration: list[Path | None] = []
            for index, scene in enumerate(scenes):
                narration.append(synthesise(scene.narration, folder / f"narration{index:03d}.wav")
                                 if scene.narration else None)
                phase("narration", PROGRESS_NARRATION + 0.05 * (index + 1) / len(scenes))
            background = self._check_background(video, folder)
            output = folder / "video.mp4"
            render = Render(stills, scenes, narration, preset, size, output, background=background,
                            encoder=self.video.encoder)
            if self.video.subtitles:
                args, timeline = build_command(self.video.ffmpeg_path(), render)
                srt = folder / "narration.srt"
                if write_srt(scenes, timeline, srt):
                    render = Render(stills, scenes, narration, preset, size, output, background=background,
                                    subtitles=srt, encoder=self.video.encoder)
            args, timeline = build_command(self.video.ffmpeg_path(), render)
            phase("render", PROGRESS_RENDER, force=True)

            def render_progress(done: float) -> None:
                with contextlib.suppress(Cancelled):
                    phase("render", PROGRESS_RENDER + PROGRESS_RENDER_SPAN * done)

            try:
                run_ffmpeg(args, timeline.seconds, progress=render_progress,
                           cancelled=lambda: cancelled[0] or self.aborting.is_set(),
                           timeout_seconds=self.video.render_timeout_seconds)
            except Cancelled:
                if not cancelled[0]:  # stopped for the daemon's stop, not by a producer: the row goes back
                    raise Interrupted("daemon stopping") from None
                raise
            if self.aborting.is_set():
                raise Interrupted("daemon stopping")
            phase("upload", PROGRESS_UPLOAD, force=True)
            poster = self._poster(stills[0], size)
            self._store_and_finish(row, video, output.read_bytes(), poster, size, timeline.seconds, started, counts)

    @staticmethod
    def _poster(still: Path, size: tuple[int, int]) -> bytes:
        with PILImage.open(still) as image:
            framed = ImageOps.fit(image.convert("RGB"), size, PILImage.Resampling.LANCZOS)
        buffer = io.BytesIO()
        framed.save(buffer, "JPEG", quality=POSTER_QUALITY, optimize=True)
        return buffer.getvalue()

    def _store_and_finish(self, row: ClaimedRow, video: VideoRow, mp4: bytes, poster: bytes, size: tuple[int, int],
                          seconds: float, started: float, counts: PassCounts) -> None:
        claim = row.claim
        name, poster_name = video_object_names(row.id)
        store = self.target
        results = store.put_all([StoredObject(name, mp4, "video/mp4"), StoredObject(poster_name, poster, "image/jpeg")])
        urls = [url for url in results if isinstance(url, str)]
        errors = [error for error in results if isinstance(error, StoreUnavailable)]
        if errors:
            self._delete(store, urls, row.id)
            raise errors[0]
        video_url, poster_url = urls
        folder = store.target.folder
        output_path = str(folder / name) if folder is not None else None
        preset = preset_of(video.video_preset)
        cost = video_cost(seconds, preset, self.video.cost_per_second, self.video.cost_multipliers)
        try:
            status = self.videos.mark_done(claim, output_url=video_url, output_path=output_path,
                                           thumbnail_url=poster_url, seconds=round(seconds, 3), cost=cost, size=size,
                                           warning=None, generation_seconds=time.monotonic() - started)
        except (LostOwnership, RowLocked):
            self._delete(store, urls, row.id)
            raise
        if status == Status.FAILED:  # cancelled as it was stored: nothing is left behind
            self._delete(store, urls, row.id)
            counts.failed += 1
            log.info("video_failed", id=row.id, status=status, error="cancelled")
            return
        counts.done += 1
        log.info("video_done", id=row.id, status=status, seconds=round(seconds, 3), url=video_url,
                 took=round(time.monotonic() - started, 2))

    @staticmethod
    def _delete(store: Store, urls: list[str], video_id: int) -> None:
        if not urls:
            return
        try:
            store.delete_urls(urls)
        except StoreUnavailable as exc:
            log.warning("video_objects_kept", id=video_id, error=str(exc))
