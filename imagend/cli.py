"""`imagend`: the Go service's flags (-generator, -processor, -cron, -verbose) and a few more.

Exit codes: 0 done; 1 the database could not be reached; 2 bad flags or configuration.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from imagend import __version__
from imagend.backends import check_backends, create_backends, missing_libraries
from imagend.config.settings import Settings, load_settings
from imagend.db.columns import BACKEND_NAMES
from imagend.db.connect import apply_schema, database_setting, database_url, describe_target, open_pool
from imagend.db.operations import ALL_BACKENDS, OperationsRepository
from imagend.db.owners import SCOPES, OwnersRepository, parse_plan_values
from imagend.db.presets import PresetRepository
from imagend.db.repository import Repository
from imagend.errors import BadInput, ConfigError, DatabaseUnavailable
from imagend.http.server import HttpServer
from imagend.logs import configure, get_logger
from imagend.maintenance import retention
from imagend.maintenance.export import export_images
from imagend.operations.health import LoopHealth, stuck_after
from imagend.operations.metrics import Metrics
from imagend.operations.status import status_report
from imagend.presets.recipes import parse_preset_values
from imagend.queue.daemon import Daemon, daemon_identity
from imagend.storage import Store, StoreUnavailable, open_store
from imagend.storage.health import StoreHealth
from imagend.storage.links import Links, derive_secret
from imagend.webhooks.delivery import WebhookSender


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagend",
        description="Postgres-polled image generation daemon. Producers INSERT INTO images (prompt) VALUES (...).",
        allow_abbrev=False,
    )
    # Single-dash long flags, as the Go service had; the double-dash spellings work too.
    parser.add_argument(
        "-generator", "--generator", action="store_true", help="claim and generate/submit once, then exit"
    )
    parser.add_argument(
        "-processor",
        "--processor",
        action="store_true",
        help="rescue expired leases and poll remote tasks once, then exit",
    )
    parser.add_argument(
        "-cron", "--cron", action="store_true", help="run as a daemon (interval jobs + LISTEN wake-ups)"
    )
    parser.add_argument("-verbose", "--verbose", action="store_true", help="debug logs with file and line")
    parser.add_argument("-status", "--status", action="store_true", help="print the queue status view as JSON and exit")
    parser.add_argument(
        "-pause", "--pause", nargs="*", metavar="BACKEND",
        help="pause claiming for these backends (none named: all) on every daemon, until -resume; then exit",
    )
    parser.add_argument(
        "-resume", "--resume", nargs="*", metavar="BACKEND",
        help="lift the pause of these backends (none named: every pause); then exit",
    )
    # Owners and plans (docs/owners.md): each changes or prints, then exits.
    parser.add_argument(
        "-plan", "--plan", nargs="+", metavar=("NAME", "KEY=VALUE"),
        help="create or change a plan: max_running=N weight=W max_waiting=M rate=R (rows a minute) budget=B "
        "period=day|week|month default=true|false ('none': no limit); then exit",
    )
    parser.add_argument("-plan-delete", "--plan-delete", metavar="NAME",
                        help="delete a plan (its owners fall back to the default plan); then exit")
    parser.add_argument("-assign", "--assign", nargs=2, metavar=("OWNER", "PLAN"),
                        help="put an owner on a plan ('-': the default plan); then exit")
    parser.add_argument("-plans", "--plans", action="store_true", help="print the plans as JSON and exit")
    # Presets (docs/presets.md): each changes or prints, then exits.
    parser.add_argument(
        "-preset", "--preset", nargs="+", metavar=("NAME", "KEY=VALUE"),
        help="create or change a preset: prompt='… {prompt} …' negative_prompt=… style=… width=W height=H model=M "
        "loras=JSON steps=S guidance=G scheduler=… n=N post=token ('none': unset); then exit",
    )
    parser.add_argument("-preset-delete", "--preset-delete", metavar="NAME", help="delete a preset; then exit")
    parser.add_argument("-presets", "--presets", action="store_true", help="print the presets as JSON and exit")
    parser.add_argument(
        "-key-create", "--key-create", nargs="+", metavar=("OWNER", "SCOPE"),
        help="create an API key for OWNER (scopes: submit read cancel delete, default all) and print it once, "
        "on its own line; then exit",
    )
    parser.add_argument("-key-revoke", "--key-revoke", metavar="KEY_OR_PREFIX",
                        help="revoke an API key, by the key or its prefix (imk_…); then exit")
    parser.add_argument(
        "-export-images",
        "--export-images",
        action="store_true",
        help="copy the base64 of finished rows with no stored copy to IMAGEND_STORAGE_URL (resumable), then exit",
    )
    parser.add_argument(
        "-make-tiny-model",
        "--make-tiny-model",
        metavar="DIR",
        help="write a miniature random-weights SDXL pipeline (it makes noise) to DIR and exit",
    )
    parser.add_argument(
        "-family",
        "--family",
        choices=("sdxl", "flux", "sd3", "kandinsky3"),
        default="sdxl",
        help="with -make-tiny-model: the family of the miniature pipeline (default sdxl)",
    )
    parser.add_argument(
        "-make-tiny-models",
        "--make-tiny-models",
        metavar="DIR",
        help="write every miniature random-weights model (two SDXL checkpoints, LoRAs, an IP-Adapter, an x4 upscaler;"
        " they make noise) under DIR, print the IMAGEND_* lines that use them, and exit",
    )
    parser.add_argument(
        "-import-model",
        "--import-model",
        nargs=2,
        metavar=("FILE", "NAME"),
        help="convert a single-file checkpoint (.safetensors or .ckpt, A1111 layout) once to a diffusers folder, "
        "IMAGEND_DATA_DIR/models/NAME, which later starts load instead of the file while it is unchanged; then exit",
    )
    parser.add_argument(
        "-env-file",
        "--env-file",
        metavar="PATH",
        help="the .env file; it must exist (default: .env in the working directory, if there is one)",
    )
    parser.add_argument("-version", "--version", action="version", version=f"imagend {__version__}")
    return parser


# Go's flag package: a boolean flag also takes `-flag=VALUE` with strconv.ParseBool's spellings.
GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})
BOOL_FLAGS = frozenset({"generator", "processor", "cron", "verbose", "status", "export-images", "plans", "presets"})
VALUE_FLAGS = frozenset({"make-tiny-model", "make-tiny-models", "env-file", "family", "plan-delete", "key-revoke",
                         "preset-delete"})
_GO_FLAG = re.compile(r"--?([a-z][a-z-]*)=(.*)", re.DOTALL)


def go_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """`argv` with the Go service's boolean spellings (`-cron=true`, `-verbose=false`, `--cron=1`)
    turned into what argparse reads: the flag alone, or nothing. A value ParseBool would refuse
    is an error naming the flag (exit 2, as Go's flag package)."""
    out: list[str] = []
    expects_value = False
    for index, arg in enumerate(argv):
        if arg == "--":
            out.extend(argv[index:])
            break
        match = None if expects_value else _GO_FLAG.fullmatch(arg)
        expects_value = not expects_value and arg.lstrip("-") in VALUE_FLAGS and arg.startswith("-")
        if match is None or match.group(1) not in BOOL_FLAGS:
            out.append(arg)
            continue
        name, value = match.groups()
        if value in GO_TRUE:
            out.append(f"-{name}")
        elif value not in GO_FALSE:
            parser.error(f"invalid boolean value {value!r} for -{name}: use true or false")
    return out


# The miniatures make an image in tens of milliseconds at these settings on a CPU; at the daemon's defaults
# (1024 x 1024, 30 steps) one takes minutes there. 128 is a multiple of every family's side.
TINY_DEFAULTS = ("DEFAULT_IMAGE_WIDTH=128", "DEFAULT_IMAGE_HEIGHT=128", "IMAGEND_DEFAULT_STEPS=4")


def _print_settings(lines: Sequence[str], what: str) -> None:
    """The .env lines that start the local backend on what was written: paste them as they are."""
    print(f"imagend: to use {what} with the local backend, put these lines in .env (or the environment):")
    print("# miniature random-weights models: every image is noise; small sizes and few steps keep it fast")
    for line in ("IMAGEND_BACKEND=local", *lines, *TINY_DEFAULTS):
        print(line)


def make_tiny_models(directory: str) -> int:
    """-make-tiny-models DIR: every miniature model (random weights, they make noise), then the
    IMAGEND_* lines that point the local backend at them."""
    from imagend.backends.local.miniature.extras import write_tiny_models

    paths = write_tiny_models(directory)
    print(f"imagend: wrote miniature random-weights models (they make noise) under {directory}:")
    for name, path in paths.items():
        print(f"  {name:<15} {path}")
    _print_settings([
        f"IMAGEND_MODELS=sdxl={paths['sdxl']},sdxl-b={paths['sdxl-b']}",
        "IMAGEND_MODEL=sdxl",
        f"IMAGEND_LORA_DIR={paths['loras']}",
        f"IMAGEND_IP_ADAPTER={paths['ip-adapter']}",
        f"IMAGEND_UPSCALER={paths['upscaler']}",
        f"IMAGEND_CONTROLNETS=canny={paths['controlnet']}",
    ], "them")
    return 0


def make_tiny_model(directory: str, family: str) -> int:
    """-make-tiny-model DIR [-family F]: one miniature pipeline, then the lines that use it."""
    if family != "sdxl":
        from imagend.backends.local.miniature.families import FAMILIES, write_tiny_pipeline

        written = write_tiny_pipeline(directory, family)
        what = FAMILIES[family][1]
    else:
        from imagend.backends.local.miniature.sdxl import write_tiny_model

        written = write_tiny_model(directory)
        what = "SDXL"
    folder = Path(written).expanduser().resolve()  # an .env line that holds wherever it is read from
    print(f"imagend: wrote a miniature random-weights {what} pipeline (it makes noise) to {folder}")
    _print_settings([f"IMAGEND_MODEL={folder}"], "it")
    return 0


def import_model(args: argparse.Namespace) -> int:
    """-import-model FILE NAME (docs/local.md, Single-file checkpoints): no database, exit 2 naming what is wrong."""
    missing = missing_libraries("local")
    if missing is not None:
        print(f"imagend: -import-model loads a diffusers pipeline, but {missing}: install imagend[local]",
              file=sys.stderr)
        return 2
    file, name = args.import_model
    try:
        if args.env_file is None:
            settings = load_settings(env_file=".env")
        else:
            settings = load_settings(env_file=args.env_file, env_file_required=True)
        configure(verbose=args.verbose, secrets=settings.secrets())
        import torch

        from imagend.backends.local.families import family_of
        from imagend.backends.local.options import LocalSettings
        from imagend.backends.local.single_file import import_model as convert

        options = LocalSettings.from_settings(settings, cuda_available=torch.cuda.is_available())
        folder, seconds = convert(file, name, family_of(file, "-import-model"), options)
    except ConfigError as exc:
        print(f"imagend: configuration error: {exc}", file=sys.stderr)
        return 2
    print(f"imagend: imported {file} as a diffusers folder in {seconds:.1f} s: {folder}")
    print(f"imagend: an IMAGEND_MODEL or IMAGEND_MODELS entry naming {file} now loads that folder while the file is "
          f"unchanged; or name the folder itself: IMAGEND_MODELS={name}={folder}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(go_flags(parser, sys.argv[1:] if argv is None else argv))
    if args.import_model:
        return import_model(args)
    if args.make_tiny_model or args.make_tiny_models:
        flag = "-make-tiny-model" if args.make_tiny_model else "-make-tiny-models"
        missing = missing_libraries("local")
        if missing is not None:
            print(f"imagend: {flag} builds a diffusers pipeline, but {missing}: install imagend[local]",
                  file=sys.stderr)
            return 2
        if not args.make_tiny_model:
            return make_tiny_models(args.make_tiny_models)
        return make_tiny_model(args.make_tiny_model, args.family)
    pausing = args.pause is not None or args.resume is not None
    if not (args.generator or args.processor or args.cron or args.status or args.export_images or pausing
            or _owners_command(args) or _presets_command(args)):
        parser.print_usage(sys.stderr)
        print("imagend: say what to run: -cron, -generator, -processor, -status, -pause, -resume, -export-images, "
              "-plan, -plans, -assign, -key-create, -key-revoke, -preset or -presets", file=sys.stderr)
        return 2
    for name in [*(args.pause or []), *(args.resume or [])]:
        if name not in (*BACKEND_NAMES, ALL_BACKENDS):
            parser.error(f"unknown backend {name!r}: use one of {', '.join(BACKEND_NAMES)} (or none: all)")
    try:
        if args.env_file is None:
            settings = load_settings(env_file=".env")
        else:
            settings = load_settings(env_file=args.env_file, env_file_required=True)
    except ConfigError as exc:
        print(f"imagend: configuration error: {exc}", file=sys.stderr)
        return 2
    configure(verbose=args.verbose, secrets=settings.secrets())
    log = get_logger()
    try:
        return _run(args, settings)
    except ConfigError as exc:
        log.error("configuration_error", error=str(exc))
        print(f"imagend: configuration error: {exc}", file=sys.stderr)
        return 2
    except DatabaseUnavailable as exc:
        log.error("database_unavailable", error=str(exc))
        return 1


def _no_database(settings: Settings) -> str | None:
    """Why an operator's command (-status, -pause, -resume) has no queue to read: no database configured
    and no embedded Postgres yet, typically a folder without the daemon's .env. Starting an empty one there
    would report no queue and no daemons, which reads as a dead fleet."""
    if not settings.embedded_database or (settings.data_dir / "postgres" / "PG_VERSION").is_file():
        return None
    env_file = Path(".env").resolve()
    where = f"nor in {env_file}" if env_file.is_file() else f"no {env_file}"
    return (f"no database to read: neither DATABASE_URL nor DB_HOST/DB_NAME is set ({where}), and no "
            f"daemon has run an embedded Postgres under IMAGEND_DATA_DIR={settings.data_dir}. Run it where the "
            "daemon's .env is, or name it: -env-file PATH, DATABASE_URL, or IMAGEND_DATA_DIR for an embedded one")


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.generator or args.processor or args.cron:
        check_backends(settings)  # a start that cannot succeed stops here, before the table is upgraded
    elif (args.status or args.pause is not None or args.resume is not None or _owners_command(args)
          or _presets_command(args)):
        missing = _no_database(settings)
        if missing is not None:
            raise ConfigError(missing)
    url = database_url(settings)
    apply_schema(url, setting=database_setting(settings))
    with open_pool(url, settings) as pool:
        repo = Repository(
            pool,
            daemon_identity(),
            lease_seconds=settings.lease_seconds,
            default_backend=settings.default_backend,
            default_max_attempts=settings.default_max_attempts,
            dead_after_seconds=settings.dead_after_seconds,
            max_crashes=settings.max_crashes,
        )
        ops = OperationsRepository(pool, dead_after_seconds=settings.dead_after_seconds)
        if args.pause is not None or args.resume is not None:
            if args.pause is not None:
                ops.pause(args.pause, by=f"{socket.gethostname()} (imagend -pause)")
            if args.resume is not None:
                ops.resume(args.resume)
            print(json.dumps({"paused": [p.backend for p in ops.paused()]}))
            return 0
        if _owners_command(args):
            return _owners(args, OwnersRepository(pool))
        if _presets_command(args):
            return _presets(args, PresetRepository(pool))
        if args.status:
            serving = {entry.backend: entry.daemons_serving for entry in repo.unserved(served=())}
            where = database_setting(settings)
            database = where if settings.embedded_database else f"{where}: {describe_target(url)}"
            report = status_report(repo.queue_status(), ops.daemons(), ops.paused(), settings.default_backend, serving,
                                   database)
            report["plans"] = OwnersRepository(pool).plans()
            print(json.dumps(report, default=str, indent=2))
            return 0
        if args.export_images:
            return _export(repo, settings)
        # The one store of this process, built here and handed to the loops and the listener.
        store = open_store(settings.storage, settings.env.values) if settings.storage is not None else None
        store_health = StoreHealth()
        if store is not None:
            store.check()
        if settings.retention.enabled and (args.cron or args.processor):
            retention.prepare(repo, settings.retention)
        metrics, health = Metrics(), LoopHealth(stuck_after(settings))
        # Up before the backends load (minutes for a model on a GPU host): /readyz says it is loading.
        http_server = None
        links = image_links(settings, store)
        if args.cron and settings.http is not None:
            http_server = HttpServer(settings.http, settings, url, metrics, health, settings.served_backends, store,
                                     store_problem=store_health.problem, links=links)
            http_server.start()
        # Webhooks (the outbox's deliveries) on a thread of their own, beside the loops.
        webhooks = None
        if args.cron:
            webhooks = WebhookSender(url, settings.webapp, links)
            repo.on_webhook_events = webhooks.poke
            webhooks.start()
        try:
            return _run_backends(args, settings, repo, url, metrics, health, http_server, store, store_health)
        finally:
            if webhooks is not None:
                webhooks.stop()
            if http_server is not None:
                http_server.stop()
            if store is not None:
                store.close()


def _owners_command(args: argparse.Namespace) -> bool:
    return bool(args.plan or args.plan_delete or args.assign or args.plans or args.key_create or args.key_revoke)


def _owners(args: argparse.Namespace, owners: OwnersRepository) -> int:
    """-plan, -plan-delete, -assign, -plans, -key-create, -key-revoke (docs/owners.md). Exit 2 with the
    reason for a bad value, an unknown plan or key."""
    try:
        if args.plan:
            owners.set_plan(args.plan[0], parse_plan_values(args.plan[1:]))
        if args.plan_delete and not owners.delete_plan(args.plan_delete):
            raise BadInput(f"no plan named {args.plan_delete!r}")
        if args.assign:
            owner, plan = args.assign
            owners.assign(owner, None if plan in ("-", "") else plan)
        if args.key_create:
            owner, *scopes = args.key_create
            key = owners.create_key(owner, scopes or SCOPES)
            # The key, once, alone on its line (a script reads it with `| tail -1`); never logged.
            print(f"imagend: a new API key for owner {owner!r} (scopes {', '.join(scopes or SCOPES)}); it is not "
                  "stored and will not be shown again:", file=sys.stderr)
            print(key)
        if args.key_revoke:
            revoked = owners.revoke_key(args.key_revoke)
            if not revoked:
                raise BadInput("no live key has that key or prefix (already revoked, or never created)")
            print(json.dumps({"revoked": revoked}))
        if args.plans or args.plan or args.plan_delete or args.assign:
            print(json.dumps({"plans": owners.plans()}, default=str, indent=2))
    except BadInput as exc:
        print(f"imagend: {exc}", file=sys.stderr)
        return 2
    return 0


def _presets_command(args: argparse.Namespace) -> bool:
    return bool(args.preset or args.preset_delete or args.presets)


def _presets(args: argparse.Namespace, presets: PresetRepository) -> int:
    """-preset, -preset-delete, -presets (docs/presets.md): exit 2 with the reason for a bad value or an
    unknown preset; otherwise print every preset as JSON."""
    try:
        if args.preset:
            presets.set_preset(args.preset[0], parse_preset_values(args.preset[1:]))
        if args.preset_delete and not presets.delete_preset(args.preset_delete):
            raise BadInput(f"no preset named {args.preset_delete!r}")
    except BadInput as exc:
        print(f"imagend: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"presets": presets.presets()}, default=str, indent=2))
    return 0


def image_links(settings: Settings, store: Store | None) -> Links:
    """The links a browser opens (storage/links.py): signed with IMAGEND_LINK_SECRET, else a key derived
    from IMAGEND_HTTP_TOKEN, else unsigned paths."""
    webapp = settings.webapp
    token = settings.http.token if settings.http is not None else None
    secret = (webapp.link_secret.reveal().encode() if webapp.link_secret is not None
              else derive_secret(token.reveal()) if token is not None else None)
    return Links(store=store, secret=secret, seconds=webapp.link_seconds, public_base_url=webapp.public_base_url)


def _run_backends(args: argparse.Namespace, settings: Settings, repo: Repository, url: str, metrics: Metrics,
                  health: LoopHealth, http_server: HttpServer | None, store: Store | None,
                  store_health: StoreHealth) -> int:
    started = time.monotonic()
    backends = create_backends(settings)
    for name in backends:
        metrics.model_load_seconds.labels(name).set(time.monotonic() - started)
    if http_server is not None:
        http_server.ready.backends_loaded()
    try:
        listen_url = settings.listen_url.reveal() if settings.listen_url else url
        daemon = Daemon(settings, repo, backends, listen_url=listen_url, metrics=metrics, health=health, store=store,
                        store_health=store_health)
        if args.cron:
            return daemon.run_forever()
        try:
            daemon.run_once(generator=args.generator, processor=args.processor)
        except KeyboardInterrupt:
            return 130
        return 0
    finally:
        for backend in backends.values():
            backend.close()


def _export(repo: Repository, settings: Settings) -> int:
    """-export-images: 0 when every row is exported; 1 when the store failed (a new run resumes)."""
    if settings.storage is None:
        raise ConfigError("-export-images needs IMAGEND_STORAGE_URL: the storage target to export to")
    store = open_store(settings.storage, settings.env.values)
    store.check()
    try:
        counts = export_images(repo, store, keep_base64=settings.store_base64)
    except StoreUnavailable as exc:
        get_logger().error("export_stopped", error=str(exc), action="run -export-images again to resume")
        return 1
    except KeyboardInterrupt:
        return 130
    print(json.dumps(dataclasses.asdict(counts)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
