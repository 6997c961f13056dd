"""Recipes: the papers' tables as data, each row a sequence of `zsc` commands with the paper's settings.

A recipe file (``zsc/recipe_tables/<name>.json``) names a table of a paper (methods.md), its metrics, the paper's
numbers per row (``null`` where methods.md gives none: printed as "-", never invented), what each row needs on this
machine (data files and model weights, each with the command that gets them), and the commands: ``setup`` runs once
per row, ``steps`` once per seed. Commands are `zsc` argv lists whose ``{placeholders}`` the runner fills: ``{seed}``,
``{work}`` (this seed's folder), ``{row_work}`` (the row's folder, shared by its seeds), ``{data}`` (the data root),
``{datasets}`` (the datasets beside the checkout) and the row's own ``vars``. The last step writes ``result`` (a JSON
of metrics, as `--metrics-out` writes it).

This module knows nothing of gRPC or MLflow: ``run_row`` takes a callback that executes one command and returns what
it printed; the CLI (`zsc reproduce`) runs them in-process and logs the seeds' results as MLflow runs.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zsc.errors import FailedPrecondition, InvalidArgument

RECIPE_DIR = Path(__file__).parent / "recipe_tables"
DATASETS = Path(__file__).resolve().parents[3] / "shared" / "datasets"  # beside the checkout
RUN_ID = re.compile(r"\b(?:MLflow run:?|run)\s+([0-9a-f]{32})\b")


class RecipeUnavailable(FailedPrecondition):
    """A row cannot run here: one line naming the missing file or weights and how to get them."""


@dataclass(frozen=True)
class Requirement:
    """A file or folder a row reads (``path``, with placeholders) and the command that makes it (``get``)."""

    path: str
    get: str


@dataclass(frozen=True)
class Weights:
    """A model a row needs: its profile reference (as ``zsc.profiles`` names it) and role (clip, sd)."""

    role: str
    ref: str


@dataclass(frozen=True)
class Row:
    name: str
    paper: dict[str, float | None]
    vars: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Recipe:
    name: str
    title: str
    method: str
    profile: str
    split: str
    metrics: tuple[str, ...]
    rows: tuple[Row, ...]
    setup: tuple[tuple[str, ...], ...]
    steps: tuple[tuple[str, ...], ...]
    result: str
    requires: tuple[Requirement, ...] = ()
    weights: tuple[Weights, ...] = ()
    seeds: tuple[int, ...] = (0, 1, 2)
    source: str = ""
    notes: str = ""

    def row(self, name: str) -> Row:
        for r in self.rows:
            if r.name.lower() == name.lower():
                return r
        raise InvalidArgument(f"recipe {self.name!r} has no row {name!r}; rows: {', '.join(r.name for r in self.rows)}")


def _recipe(data: dict[str, Any], origin: str) -> Recipe:
    try:
        metrics = tuple(data["metrics"])
        rows = tuple(
            Row(r["name"], {m: r.get("paper", {}).get(m) for m in metrics}, r.get("vars", {})) for r in data["rows"]
        )
        return Recipe(
            name=data["name"],
            title=data["title"],
            method=data["method"],
            profile=data["profile"],
            split=data.get("split", ""),
            metrics=metrics,
            rows=rows,
            setup=tuple(tuple(c) for c in data.get("setup", [])),
            steps=tuple(tuple(c) for c in data["steps"]),
            result=data["result"],
            requires=tuple(Requirement(**r) for r in data.get("requires", [])),
            weights=tuple(Weights(**w) for w in data.get("weights", [])),
            seeds=tuple(data.get("seeds", (0, 1, 2))),
            source=data.get("source", ""),
            notes=data.get("notes", ""),
        )
    except (KeyError, TypeError) as err:
        raise InvalidArgument(f"recipe {origin} is malformed: {type(err).__name__}: {err}") from None


def load_recipe_file(path: Path) -> Recipe:
    """One recipe from its JSON file (a user's own table, in the format of ``zsc/recipe_tables``)."""
    if not path.is_file():
        raise InvalidArgument(f"no such recipe file: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InvalidArgument(f"recipe {path} is not JSON: {err}") from None
    return _recipe(data, str(path))


def load_recipes(folder: Path = RECIPE_DIR) -> dict[str, Recipe]:
    """Every recipe in ``folder`` by name (file order: sorted names)."""
    recipes: dict[str, Recipe] = {}
    for path in sorted(folder.glob("*.json")):
        recipe = load_recipe_file(path)
        if recipe.name in recipes:
            raise InvalidArgument(f"recipe {recipe.name!r} is defined twice ({path})")
        recipes[recipe.name] = recipe
    return recipes


def get_recipe(name: str, folder: Path = RECIPE_DIR) -> Recipe:
    recipes = load_recipes(folder)
    if name not in recipes:
        raise InvalidArgument(f"unknown recipe {name!r}; recipes: {', '.join(recipes)}")
    return recipes[name]


def fill(text: str, values: dict[str, str]) -> str:
    """``text`` with its {placeholders} replaced; an unknown one is an error in the recipe, named."""
    try:
        return text.format(**values)
    except KeyError as err:
        raise InvalidArgument(f"recipe placeholder {{{err.args[0]}}} has no value in {text!r}") from None


def placeholders(row: Row, *, work: Path, data: Path, datasets: Path = DATASETS, seed: int | None = None) -> dict:
    values = {"row_work": str(work), "data": str(data), "datasets": str(datasets), **row.vars}
    if seed is not None:
        values.update(seed=str(seed), work=str(work / f"seed{seed}"))
    # A var may use the others ("{data}/gzsl/awa2", "{real}" of "{datasets}/..."): fill until nothing changes.
    for _ in range(len(values)):
        filled = {k: fill(v, values) for k, v in values.items()}
        if filled == values:
            break
        values = filled
    return values


def check_row(
    recipe: Recipe, row: Row, values: dict[str, str], weights_check: Callable[[Weights], None] | None = None
) -> None:
    """Raise RecipeUnavailable (one line) for the first missing file or model of ``row``; the weights are checked
    by ``weights_check`` (it raises zsc's one-line ModelUnavailable: the model, its hub repo, the fix)."""
    for req in recipe.requires:
        path = Path(fill(req.path, values))
        if not path.exists():
            raise RecipeUnavailable(
                f"recipe {recipe.name} row {row.name}: missing {path}; get it with: {fill(req.get, values)}"
            )
    if weights_check is not None:
        for w in recipe.weights:
            try:
                weights_check(w)
            except Exception as err:  # the checkers' own one line, prefixed with the row
                raise RecipeUnavailable(f"recipe {recipe.name} row {row.name}: {err}") from None


@dataclass
class SeedResult:
    seed: int
    metrics: dict[str, float]
    step_runs: list[str]  # the MLflow runs the row's commands printed


def run_row(
    recipe: Recipe,
    row: Row,
    seeds: Iterable[int],
    execute: Callable[[list[str]], str],
    *,
    work: Path,
    data: Path,
    datasets: Path = DATASETS,
    on_seed: Callable[[SeedResult], None] | None = None,
) -> list[SeedResult]:
    """Run ``setup`` once and ``steps`` per seed through ``execute`` (one zsc argv -> its stdout); read each seed's
    ``result`` JSON."""
    work.mkdir(parents=True, exist_ok=True)
    shared = placeholders(row, work=work, data=data, datasets=datasets)
    for command in recipe.setup:
        execute([fill(a, shared) for a in command])
    results = []
    for seed in seeds:
        values = placeholders(row, work=work, data=data, datasets=datasets, seed=seed)
        Path(values["work"]).mkdir(parents=True, exist_ok=True)
        printed = [execute([fill(a, values) for a in command]) for command in recipe.steps]
        result_path = Path(fill(recipe.result, values))
        if not result_path.is_file():
            raise RecipeUnavailable(f"recipe {recipe.name} row {row.name}: its last step wrote no {result_path}")
        raw = json.loads(result_path.read_text(encoding="utf-8"))
        runs = [m for text in printed for m in RUN_ID.findall(text)]
        result = SeedResult(seed, {m: float(raw[m]) for m in recipe.metrics}, list(dict.fromkeys(runs)))
        if on_seed is not None:
            on_seed(result)
        results.append(result)
    return results


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value), as papers report over seeds."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def percent(value: float) -> float:
    """Papers print accuracies in percent; zsc's metrics are fractions."""
    return 100.0 * value


def table(recipe: Recipe, results: dict[str, list[SeedResult]], run_ids: dict[str, list[str]]) -> str:
    """Markdown: per row and metric the paper number, zsc mean ± std over seeds (percent), the difference and the
    MLflow runs of the seeds."""
    lines = [
        f"{recipe.title} ({recipe.method}, profile {recipe.profile}; {recipe.split})",
        "",
        "| row | metric | paper | zsc mean ± std | seeds | zsc - paper | MLflow runs |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in recipe.rows:
        if row.name not in results:
            continue
        seeds = results[row.name]
        for metric in recipe.metrics:
            mean, std = mean_std([percent(s.metrics[metric]) for s in seeds])
            paper = row.paper.get(metric)
            diff = f"{mean - paper:+.2f}" if paper is not None else "-"
            lines.append(
                f"| {row.name} | {metric} | {paper if paper is not None else '-'} | {mean:.2f} ± {std:.2f} "
                f"| {len(seeds)} | {diff} | {', '.join(r[:12] for r in run_ids.get(row.name, []))} |"
            )
    return "\n".join(lines)
