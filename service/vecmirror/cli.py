"""The `vecmirror` command line. Errors vecmirror expects print one clear message and exit 2.

A driver error that got past the translation at the boundary (vecmirror.boundary) is still one line
and exit 2, flagged as an internal error to report, its traceback logged at debug level: it is a
server's trouble, not the user's, but vecmirror should have named it. Any other exception is a bug
and keeps its traceback (as one JSON log line in `run` when logs are JSON).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

import click
import structlog
from pydantic import ValidationError

from vecmirror import __version__
from vecmirror.config import Config, load_config
from vecmirror.errors import ArgumentError, VecmirrorError
from vecmirror.logging import configure_logging, redact, renders_json
from vecmirror.settings import Settings

T = TypeVar("T")
EXIT_ERROR = 2
EXIT_BUG = 1  # what Python exits with on an uncaught exception
EXIT_CHANGES_PENDING = 3  # `plan` / `migrate --dry-run`: applying the file would change something
DRIVER_PACKAGES = ("asyncpg", "redis")
log = structlog.get_logger(__name__)


def _settings(config_path: Path | None) -> Settings:
    try:
        settings = Settings()
    except ValidationError as exc:
        raise settings_error(exc) from None
    if config_path is not None:
        settings = settings.model_copy(update={"config": config_path})
    configure_logging(settings.log_format, settings.log_level)
    return settings


def settings_error(exc: ValidationError) -> VecmirrorError:
    """One line naming each environment variable that is wrong; never its value (it may be a URL
    with a password)."""
    problems = [f"VECMIRROR_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()]
    return VecmirrorError(f"invalid settings: {'; '.join(problems)}")


def _config(settings: Settings) -> Config:
    return load_config(settings.config)


def config_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--config",
        "config_path",
        type=click.Path(path_type=Path),
        default=None,
        help="Mirrors file (default: $VECMIRROR_CONFIG, else ./vecmirror.yaml).",
    )(command)


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def failure_message(exc: BaseException) -> str | None:
    """What a command that failed on `exc` prints after "vecmirror: "; None for a bug."""
    if isinstance(exc, VecmirrorError):
        return redact(str(exc))
    if not is_driver_error(exc):
        return None
    log.debug("internal_error", exc_info=exc)
    first = next(iter(str(exc).splitlines()), "")
    return (
        f"internal error: {type(exc).__name__}: {redact(first)} "
        "(please report; run with VECMIRROR_LOG_LEVEL=debug for the traceback)"
    )


def is_driver_error(exc: BaseException) -> bool:
    """An OSError, or anything asyncpg or redis-py raise."""
    return isinstance(exc, OSError) or any(
        cls.__module__.partition(".")[0] in DRIVER_PACKAGES for cls in type(exc).__mro__
    )


def handles_errors(command: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return command(*args, **kwargs)
        except BrokenPipeError:
            # The reader went away (`| head`): nothing left to say to it, and no error of ours.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except Exception as exc:
            message = failure_message(exc)
            if message is None:
                raise
            click.echo(f"vecmirror: {message}", err=True)
            sys.exit(EXIT_ERROR)

    return wrapper


@contextmanager
def failure_logged(settings: Settings) -> Iterator[None]:
    """With JSON logs, the worker's end is one JSON line (`run_failed`, or `run_crashed` with the
    traceback for a bug) and nothing else: its logs are what an orchestrator collects and parses."""
    try:
        yield
    except Exception as exc:
        if not renders_json(settings.log_format):
            raise
        message = failure_message(exc)
        if message is None:
            log.error("run_crashed", error_type=type(exc).__name__, exc_info=exc)
            sys.exit(EXIT_BUG)
        log.error("run_failed", error=message, error_type=type(exc).__name__)
        sys.exit(EXIT_ERROR)


@click.group()
@click.version_option(__version__, prog_name="vecmirror")
def main() -> None:
    """Mirror PostgreSQL tables into Redis Query Engine indexes, embeddings included."""


@main.command()
@config_option
@handles_errors
def check(config_path: Path | None) -> None:
    """Validate the mirrors file without touching any server."""
    config = _config(_settings(config_path))
    click.echo(f"ok: {len(config.mirrors)} mirror(s): " + ", ".join(m.name for m in config.mirrors))


def _plan_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option("--json", "as_json", is_flag=True, help="Print one JSON object and nothing else.")(
        command
    )
    return config_option(command)


@main.command()
@_plan_options
@click.option("--dry-run", is_flag=True, help="Print what would change (as `vecmirror plan`).")
@click.option(
    "--drop-data",
    is_flag=True,
    help="Delete the Redis index, documents and keys of mirrors removed from the file (kept by default).",
)
@handles_errors
def migrate(config_path: Path | None, dry_run: bool, drop_data: bool, as_json: bool) -> None:
    """Apply the vecmirror schema and install (or remove) the capture triggers."""
    if dry_run:
        _plan(config_path, as_json=as_json, drop_data=drop_data)
        return
    from vecmirror.commands import migrate_and_remove

    settings = _settings(config_path)
    report, removals = run_async(migrate_and_remove(settings, _config(settings), drop_data=drop_data))
    if as_json:
        payload = {**vars(report), "removals": [r.as_dict() for r in removals]}
        click.echo(json.dumps(payload, ensure_ascii=False))
        return
    click.echo(
        f"migrations applied: {report.applied or 'none'}; triggers installed: {report.installed or 'none'}; "
        f"unchanged: {report.unchanged or 'none'}; removed: {report.removed or 'none'}"
    )
    for removal in removals:
        click.echo(removal.line())


@main.command()
@_plan_options
@click.option("--drop-data", is_flag=True, help="Plan `migrate --drop-data`: removed mirrors' data deleted.")
@handles_errors
def plan(config_path: Path | None, drop_data: bool, as_json: bool) -> None:
    """What `migrate` would change, read from Postgres and Redis without writing anything.
    Exits 0 when nothing would change, 3 when changes are pending."""
    _plan(config_path, as_json=as_json, drop_data=drop_data)


def _plan(config_path: Path | None, *, as_json: bool, drop_data: bool) -> None:
    from vecmirror.commands import plan_command, print_plan

    settings = _settings(config_path)
    result = run_async(plan_command(settings, _config(settings), drop_data=drop_data))
    print_plan(result, as_json=as_json)
    if result.changes:
        sys.exit(EXIT_CHANGES_PENDING)


@main.command()
@config_option
@click.option("--once", is_flag=True, help="Drain every pending change, then exit 0.")
@handles_errors
def run(config_path: Path | None, once: bool) -> None:
    """Run the worker: LISTEN, catch up, then sync every change until SIGTERM/SIGINT."""
    from vecmirror.commands import run_command

    settings = _settings(config_path)
    with failure_logged(settings):
        run_async(run_command(settings, _config(settings), once=once, stop_signals=_stop_signals()))


@main.command()
@config_option
@click.argument("mirror", required=False)
@handles_errors
def backfill(config_path: Path | None, mirror: str | None) -> None:
    """Queue every existing row of MIRROR (default: all mirrors) and sync it, with progress."""
    from vecmirror.commands import backfill_command

    settings = _settings(config_path)
    run_async(backfill_command(settings, _config(settings), mirror))


@main.command()
@config_option
@click.argument("mirror")
@click.argument("text", required=False)
@click.option("--k", "k", default=10, show_default=True, help="Hits to return (the limit with --range).")
@click.option("--filter", "filter_expression", default=None, help="RediSearch filter, e.g. '@genre:{pets}'.")
@click.option("--return", "return_fields", multiple=True, help="Field to return (repeatable; default all).")
@click.option("--vector", "vector_json", default=None, help="Query vector as a JSON array instead of TEXT.")
@click.option("--vector-file", type=click.File("r"), default=None, help="JSON array file; - for stdin.")
@click.option("--offset", default=0, show_default=True, help="Skip this many nearest hits (paging).")
@click.option("--ef-runtime", type=int, default=None, help="HNSW search breadth (higher: better recall).")
@click.option("--range", "radius", type=float, default=None, help="Every hit within this distance.")
@click.option("--epsilon", type=float, default=None, help="HNSW range search boundary factor.")
@click.option(
    "--text-weight", type=float, default=None, help="Fused mode: weight of BM25 text relevance, 0..1."
)
@click.option("--text-field", default=None, help="Fused mode: TEXT field to match (default: the first).")
@click.option("--chunks", is_flag=True, help="A chunked mirror's hits with every chunk, nearest first.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array and nothing else.")
@handles_errors
def query(config_path: Path | None, mirror: str, text: str | None, **options: Any) -> None:
    """Nearest neighbours of TEXT (embedded with the mirror's model) or of a vector."""
    from vecmirror.commands import QueryRequest, print_hits, query_command

    settings = _settings(config_path)
    vector = _read_vector(options.pop("vector_json"), options.pop("vector_file"))
    as_json = options.pop("as_json")
    options["return_fields"] = list(options["return_fields"])
    request = QueryRequest(mirror, text, vector, **options)
    hits = run_async(query_command(settings, _config(settings), request))
    print_hits(hits, as_json=as_json)


def _read_vector(vector_json: str | None, vector_file: IO[str] | None) -> list[float] | None:
    if vector_json is not None and vector_file is not None:
        raise click.BadParameter("give --vector or --vector-file, not both", param_hint="--vector")
    if vector_file is not None:
        return _parse_vector(vector_file.read(), "--vector-file")
    return None if vector_json is None else _parse_vector(vector_json, "--vector")


def _parse_vector(text: str, option: str) -> list[float]:
    try:
        values = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=option) from exc
    if not isinstance(values, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in values
    ):
        raise click.BadParameter("expected a JSON array of numbers", param_hint=option)
    return [float(v) for v in values]


@main.command()
@config_option
@click.argument("mirror", required=False)
@click.option("--repair", is_flag=True, help="Queue every drifted key; a running worker then fixes it.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array and nothing else.")
@handles_errors
def verify(config_path: Path | None, mirror: str | None, repair: bool, as_json: bool) -> None:
    """Compare each table with its Redis documents; exit 1 when they drifted."""
    from vecmirror.commands import print_drift, verify_command

    settings = _settings(config_path)
    drifts = run_async(verify_command(settings, _config(settings), mirror, repair=repair))
    print_drift(drifts, as_json=as_json)
    if not all(d.clean for d in drifts):
        sys.exit(1)


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array and nothing else.")
@handles_errors
def status(config_path: Path | None, as_json: bool) -> None:
    """Per mirror: queued changes, oldest change's age, dead letters, table rows vs documents,
    index state and last sync."""
    from vecmirror.commands import print_status, status_command

    settings = _settings(config_path)
    print_status(run_async(status_command(settings, _config(settings))), as_json=as_json)


@main.command()
@config_option
@click.argument("mirror")
@click.option("--reason", default=None, help="Why: shown by `vecmirror status`.")
@handles_errors
def pause(config_path: Path | None, mirror: str, reason: str | None) -> None:
    """Stop every worker syncing MIRROR until `resume`; its changes keep being queued."""
    from vecmirror.commands import pause_command

    settings = _settings(config_path)
    click.echo(run_async(pause_command(settings, _config(settings), mirror, reason)).line("pause"))


@main.command()
@config_option
@click.argument("mirror")
@handles_errors
def resume(config_path: Path | None, mirror: str) -> None:
    """End an operator's pause of MIRROR: the workers sync its queued changes."""
    from vecmirror.commands import resume_command

    settings = _settings(config_path)
    click.echo(run_async(resume_command(settings, _config(settings), mirror)).line("resume"))


@main.command("wait-synced")
@config_option
@click.argument("mirror")
@click.argument("keys", nargs=-1, required=True)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds to wait, at most.",
)
@handles_errors
def wait_synced(config_path: Path | None, mirror: str, keys: tuple[str, ...], timeout: float) -> None:
    """Wait until every change of KEYS (a value, or a JSON array for a composite key) committed
    before now is in Redis. Exits 0 once synced, 1 after --timeout (saying why, where known)."""
    from vecmirror.commands import wait_synced_command

    settings = _settings(config_path)
    command = wait_synced_command(settings, _config(settings), mirror, _row_keys(keys) or [], timeout)
    outcome = run_async(command)
    click.echo(outcome.line(timeout))
    if not outcome.synced:
        sys.exit(1)


@main.group()
def failed() -> None:
    """Rows that could not become indexed documents (vecmirror.failed_v1)."""


def _failed_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.argument("keys", nargs=-1)(command)
    command = click.option("--mirror", default=None, help="Only this mirror.")(command)
    return config_option(command)


@failed.command("list")
@_failed_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array and nothing else.")
@handles_errors
def failed_list(config_path: Path | None, mirror: str | None, keys: tuple[str, ...], as_json: bool) -> None:
    """List failed rows (optionally only KEYS: a value, or a JSON array for composite keys)."""
    from vecmirror.commands import failed_command, print_failed

    settings = _settings(config_path)
    rows = run_async(failed_command(settings, "list", mirror, _row_keys(keys), _config_for(settings, mirror)))
    assert isinstance(rows, list)
    print_failed(rows, as_json=as_json)


@failed.command("retry")
@_failed_options
@handles_errors
def failed_retry(config_path: Path | None, mirror: str | None, keys: tuple[str, ...]) -> None:
    """Queue failed rows again (all, or only KEYS) once you have fixed them."""
    from vecmirror.commands import failed_command

    settings = _settings(config_path)
    count = run_async(
        failed_command(settings, "retry", mirror, _row_keys(keys), _config_for(settings, mirror))
    )
    click.echo(f"queued {count} row(s) again")


@failed.command("discard")
@_failed_options
@click.option("--all", "everything", is_flag=True, help="Discard every failed row (of --mirror).")
@handles_errors
def failed_discard(
    config_path: Path | None, mirror: str | None, keys: tuple[str, ...], everything: bool
) -> None:
    """Forget failed rows: KEYS, or --all."""
    from vecmirror.commands import failed_command

    if not keys and not everything:
        raise click.UsageError("name the KEYS to discard, or pass --all")
    settings = _settings(config_path)
    count = run_async(
        failed_command(settings, "discard", mirror, _row_keys(keys), _config_for(settings, mirror))
    )
    click.echo(f"discarded {count} row(s)")


def _config_for(settings: Settings, mirror: str | None) -> Config | None:
    """The mirrors file, read only when a mirror is named: it says whether that mirror exists."""
    return None if mirror is None else _config(settings)


def _row_keys(keys: tuple[str, ...]) -> list[tuple[str, ...]] | None:
    """A plain value is a one-column key; a JSON array is a composite key."""
    if not keys:
        return None
    parsed = []
    for key in keys:
        if key.startswith("["):
            parsed.append(_composite_key(key))
        else:
            parsed.append((key,))
    return parsed


def _composite_key(text: str) -> tuple[str, ...]:
    try:
        values = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ArgumentError(
            f"key {text!r}: a key starting with [ is read as a JSON array of the key's columns: {exc}; "
            "a one-column key that starts with [ is written as a JSON array of one: '[\"[abc\"]'"
        ) from None
    if not isinstance(values, list) or not values:
        raise ArgumentError(f"key {text!r}: expected a non-empty JSON array of the key's columns")
    if any(v is None or isinstance(v, list | dict) for v in values):
        raise ArgumentError(f"key {text!r}: a key's values are strings, numbers or booleans, never null")
    # JSON's own spelling of a value (true, 1.5), as Postgres reads it; str() would give True.
    return tuple(v if isinstance(v, str) else json.dumps(v) for v in values)


@main.group()
def stack() -> None:
    """Embedded Postgres + Redis (Query Engine, JSON) from pip packages, for demos and tests."""


@stack.command("up")
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=None, help="State directory.")
@click.option(
    "--cluster",
    "nodes",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Redis as an OSS cluster of N masters (slots split evenly) instead of one server.",
)
@handles_errors
def stack_up_command(directory: Path | None, nodes: int | None) -> None:
    """Start both servers (idempotent) and print their URLs as two shell assignments."""
    from vecmirror.stack import DEFAULT_STACK_DIR, env_lines, stack_up

    click.echo(env_lines(stack_up(directory or DEFAULT_STACK_DIR, cluster=nodes)))


@stack.command("down")
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=None, help="State directory.")
@handles_errors
def stack_down_command(directory: Path | None) -> None:
    """Stop both servers (every cluster node too)."""
    from vecmirror.stack import DEFAULT_STACK_DIR, stack_down

    stack_down(directory or DEFAULT_STACK_DIR)


@main.command()
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=None, help="Stack directory.")
@click.option("--rows", default=60, show_default=True, help="Demo rows to create.")
@handles_errors
def demo(directory: Path | None, rows: int) -> None:
    """Stack up, create a demo table, migrate, sync and answer queries while you edit rows."""
    from vecmirror.demo import run_demo
    from vecmirror.stack import DEFAULT_STACK_DIR

    configure_logging("console", "warning")
    try:
        run_async(run_demo(directory or DEFAULT_STACK_DIR, rows, stop_signals=_stop_signals()))
    except KeyboardInterrupt:  # Ctrl-C before the demo's own handlers were installed
        click.echo("demo stopped", err=True)


def _stop_signals() -> tuple[signal.Signals, ...]:
    return (signal.SIGINT, signal.SIGTERM)


if __name__ == "__main__":  # pragma: no cover
    main()
