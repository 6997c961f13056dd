"""`zsc reproduce RECIPE`: a paper's table, row by row over seeds, against the paper's numbers (zsc.recipes).

Each seed's result is an MLflow run in the ``zsc-recipes`` experiment tagged ``zsc.recipe``, ``zsc.recipe.row`` and
``zsc.seed`` (plus the runs of the commands it ran), which `zsc report` aggregates into the leaderboard.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from zsc import recipes
from zsc.cli import app
from zsc.cli.common import CommandError

EXPERIMENT = "zsc-recipes"
# Which service a recipe command talks to; commands not listed need none (data ...).
SERVICE_OF = {
    "extract-features": "classification",
    "zeroshot": "classification",
    "train-classifier": "classification",
    "evaluate": "classification",
    "recover": "recovery",
    "align": "recovery",
    "fit-teacher": "recovery",
    "train-generator": "generative",
    "generate-features": "generative",
    "train-gzsl": "generative",
    "evaluate-gzsl": "generative",
    "finetune": "generative",
    "synthesize": "synthesis",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reproduce",
        help="run a paper's table (a recipe) over seeds and print it beside the paper's numbers",
        description="Recipes: " + ", ".join(recipes.load_recipes()) + ". Without the data or weights a row needs, "
        "the command stops with one line naming what is missing and how to get it.",
    )
    p.add_argument("recipe", nargs="?", help="recipe name (see --list)")
    p.add_argument("--recipe-file", type=Path, help="run the recipe of this JSON file (zsc/recipe_tables' format)")
    p.add_argument("--list", action="store_true", help="list the recipes and their rows")
    p.add_argument("--row", action="append", default=[], help="run only this row (repeatable; default all)")
    p.add_argument("--seeds", help="comma-separated seeds (default: the recipe's, at least 3)")
    p.add_argument(
        "--work", type=Path, default=Path("data/recipes"), help="folder of the rows' files (default data/recipes)"
    )
    p.add_argument(
        "--data", type=Path, default=Path("data"), help="data root of the imported benchmarks (default data/)"
    )
    p.add_argument("--datasets", type=Path, default=recipes.DATASETS, help="the datasets folder beside the checkout")
    p.add_argument("--check", action="store_true", help="only check that every row's data and weights are here")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser(
        "report",
        help="the leaderboard: every registered model and recipe result on one HTML page, with per-model reports",
    )
    p.add_argument("--html-dir", type=Path, default=Path("reports"), help="folder of the pages (default reports/)")
    p.set_defaults(func=cmd_report)


def check_weights(weights: recipes.Weights) -> None:
    """zsc's one-line ModelUnavailable (model, hub repo, cache, `hf download` command) for weights not here."""
    if weights.role == "clip":
        from zsc.models.clip import require_clip_weights

        require_clip_weights(weights.ref)
    elif weights.role == "sd":
        from zsc.models.diffusion import require_sd_weights

        require_sd_weights(weights.ref)
    else:
        raise CommandError(f"unknown weights role {weights.role!r} (clip or sd)")


@contextlib.contextmanager
def services(names: set[str], profile: str, roots: list[Path]) -> Iterator[None]:
    """Start each service of ``names`` that has no ZSC_<SERVICE>_ADDRESS once, in-process, for all the recipe's
    commands (a command starting its own would load the models once per command), and point the commands at it."""
    from zsc.runtime.server import ServerConfig, ZscServer

    started: list[ZscServer] = []
    set_here: list[str] = []
    try:
        for name in sorted(names):
            key = f"ZSC_{name.upper()}_ADDRESS"
            if os.environ.get(key):
                continue
            server = ZscServer(name, ServerConfig(profile=profile, data_roots=roots))
            port = server.start()
            started.append(server)
            server.wait_ready(600.0)
            os.environ[key] = f"127.0.0.1:{port}"
            set_here.append(key)
        yield
    finally:
        for key in set_here:
            os.environ.pop(key, None)
        for server in started:
            server.stop(grace=5)


def execute(argv: list[str]) -> str:
    """Run one zsc command (a step: any command but a recipe) in this process; its stdout is returned, a failure is
    one line naming the command."""
    out, err = io.StringIO(), io.StringIO()
    t = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = app.run(app.STEP_COMMANDS, argv)
    if code != 0:
        last = (err.getvalue().strip().splitlines() or ["(no message)"])[-1]
        raise CommandError(f"`zsc {argv[0]}` failed: {last.removeprefix('zsc: ')}")
    print(f"  zsc {argv[0]}: {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return out.getvalue()


def log_seed(recipe: recipes.Recipe, row: recipes.Row, result: recipes.SeedResult) -> str:
    from zsc import tracking

    tags = {
        "zsc.recipe": recipe.name,
        "zsc.recipe.row": row.name,
        "zsc.recipe.method": recipe.method,
        "zsc.recipe.split": recipe.split,
        "zsc.seed": str(result.seed),
        "zsc.profile": recipe.profile,
        "zsc.recipe.runs": ",".join(result.step_runs),
    }
    with tracking.run(EXPERIMENT, f"{recipe.name}/{row.name}/seed{result.seed}", tags) as run:
        run.log_params({"seed": result.seed, **{f"paper.{k}": v for k, v in row.paper.items() if v is not None}})
        run.log_metrics(result.metrics)
        return run.id


def _log_seed_into(ids: list[str], recipe: recipes.Recipe, row: recipes.Row, result: recipes.SeedResult) -> None:
    ids.append(log_seed(recipe, row, result))


def cmd_reproduce(args: argparse.Namespace) -> int:
    if args.list:
        for r in recipes.load_recipes().values():
            print(f"{r.name}: {r.title} [{r.profile}] rows: {', '.join(row.name for row in r.rows)}")
        return 0
    if args.recipe_file is not None:
        recipe = recipes.load_recipe_file(args.recipe_file)
    elif args.recipe:
        recipe = recipes.get_recipe(args.recipe)
    else:
        raise CommandError("name a recipe (zsc reproduce --list) or give --recipe-file")
    rows = [recipe.row(n) for n in args.row] if args.row else list(recipe.rows)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(recipe.seeds)
    if len(seeds) < 3 and not args.check:
        print(f"zsc: note: {len(seeds)} seed(s); the tables report mean ± std over at least 3", file=sys.stderr)
    work, data, datasets = args.work.resolve(), args.data.resolve(), args.datasets.resolve()
    for row in rows:  # every row's needs first: a missing file stops the table before any work
        values = recipes.placeholders(row, work=work / recipe.name / _slug(row.name), data=data, datasets=datasets)
        recipes.check_row(recipe, row, values, check_weights)
    if args.check:
        print(f"recipe {recipe.name}: the data and weights of {len(rows)} row(s) are here")
        return 0
    needed = {SERVICE_OF[c[0]] for c in (*recipe.setup, *recipe.steps) if c[0] in SERVICE_OF}
    results: dict[str, list[recipes.SeedResult]] = {}
    run_ids: dict[str, list[str]] = {}
    started = time.perf_counter()
    with services(needed, recipe.profile, [Path.cwd(), work, data, datasets]):
        for row in rows:
            print(f"zsc: {recipe.name} / {row.name}: seeds {', '.join(map(str, seeds))}", file=sys.stderr)
            ids = run_ids.setdefault(row.name, [])
            results[row.name] = recipes.run_row(
                recipe,
                row,
                seeds,
                execute,
                work=work / recipe.name / _slug(row.name),
                data=data,
                datasets=datasets,
                on_seed=functools.partial(_log_seed_into, ids, recipe, row),
            )
    print(recipes.table(recipe, results, run_ids))
    print(
        f"\n{sum(map(len, results.values()))} seed runs in {time.perf_counter() - started:.0f} s; MLflow experiment "
        f"{EXPERIMENT}"
    )
    if recipe.profile == "tiny":
        print("Note: the tiny profile's models have random weights: these accuracies are chance level by design.")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from zsc.leaderboard import write_leaderboard

    page, entries, n_versions = write_leaderboard(args.html_dir.resolve())
    for e in entries:
        scores = ", ".join(f"{m} {mean:.2f} ± {std:.2f}" for m, (mean, std) in e.metrics.items())
        print(f"{e.recipe} / {e.row} [{e.profile}, {len(e.seeds)} seeds]: {scores}")
    print(f"{len(entries)} recipe rows, {n_versions} model versions: {page}")
    return 0


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
