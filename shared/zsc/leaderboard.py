"""The leaderboard: one HTML page with every registered model and every recipe result side by side.

Recipe results are the MLflow runs `zsc reproduce` logs (tags ``zsc.recipe``, ``zsc.recipe.row``, ``zsc.seed``),
aggregated per recipe row into mean ± std over seeds. Registered models are their versions as `zsc registry review`
summarizes them, each linking its per-model report.
"""

from __future__ import annotations

import html
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zsc import recipes, registry, tracking

RECIPE_EXPERIMENT = "zsc-recipes"
TINY_WARNING = "tiny profile: random-weight models, chance level by design"


@dataclass
class RecipeEntry:
    recipe: str
    row: str
    method: str
    split: str
    profile: str
    metrics: dict[str, tuple[float, float]]  # metric -> (mean, std) over seeds, in percent
    paper: dict[str, float]
    seeds: list[int]
    run_ids: list[str]
    git_commits: list[str] = field(default_factory=list)


def recipe_entries(client: Any = None) -> list[RecipeEntry]:
    """Every recipe row with results, its seeds aggregated (a rerun of a seed counts once: its latest run)."""
    client = client or tracking.client()
    experiment = client.get_experiment_by_name(RECIPE_EXPERIMENT)
    if experiment is None:
        return []
    runs = client.search_runs(
        [experiment.experiment_id],
        "tags.`zsc.recipe` != '' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=10_000,
    )
    latest: dict[tuple[str, str, str, str], Any] = {}
    for run in runs:  # newest first: keep the first of each (recipe, row, profile, seed)
        t = run.data.tags
        key = (t["zsc.recipe"], t.get("zsc.recipe.row", ""), t.get("zsc.profile", ""), t.get("zsc.seed", ""))
        latest.setdefault(key, run)
    groups: dict[tuple[str, str, str], list[Any]] = defaultdict(list)
    for (recipe, row, profile, _), run in latest.items():
        groups[(recipe, row, profile)].append(run)
    known = recipes.load_recipes()
    entries = []
    for (recipe, row, profile), group in sorted(groups.items()):
        group.sort(key=lambda r: int(r.data.tags.get("zsc.seed", "0") or 0))
        names = sorted({k for r in group for k in r.data.metrics})
        if recipe in known:  # the table's own order (S, U, H), not the alphabet
            names = [m for m in known[recipe].metrics if m in names] + [
                m for m in names if m not in known[recipe].metrics
            ]
        metrics = {
            m: recipes.mean_std([recipes.percent(r.data.metrics[m]) for r in group if m in r.data.metrics])
            for m in names
        }
        tags = group[0].data.tags
        entries.append(
            RecipeEntry(
                recipe=recipe,
                row=row,
                method=tags.get("zsc.recipe.method", ""),
                split=tags.get("zsc.recipe.split", ""),
                profile=profile,
                metrics=metrics,
                paper={
                    k.removeprefix("paper."): float(v)
                    for k, v in group[0].data.params.items()
                    if k.startswith("paper.")
                },
                seeds=[int(r.data.tags.get("zsc.seed", "0") or 0) for r in group],
                run_ids=[r.info.run_id for r in group],
                git_commits=sorted({r.data.tags.get("zsc.git_commit", "")[:10] for r in group} - {""}),
            )
        )
    return entries


def _profile_cell(profile: str) -> str:
    e = html.escape
    if profile == "tiny":
        return f"{e(profile)} <span class='warn' title='{e(TINY_WARNING)}'>⚠ {e(TINY_WARNING)}</span>"
    return e(profile or "-")


def leaderboard_html(
    entries: list[RecipeEntry], models: dict[str, list[registry.VersionSummary]], reports: dict[str, str]
) -> str:
    """The page: recipe rows (mean ± std, paper, difference) and model versions (metrics, lineage, report link)."""
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>zsc leaderboard</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;font-size:13px}.warn{color:#a00}</style>",
        "</head><body><h1>zsc leaderboard</h1>",
        "<h2>Recipe results</h2>",
        "<table id='recipes'><tr><th>method</th><th>recipe</th><th>dataset</th><th>split</th><th>metric</th>"
        "<th>zsc mean ± std</th><th>seeds</th><th>paper</th><th>zsc - paper</th><th>profile</th><th>lineage</th>"
        "</tr>",
    ]
    for entry in sorted(entries, key=lambda x: (x.method, x.row, x.recipe)):
        for metric, (mean, std) in entry.metrics.items():
            paper = entry.paper.get(metric)
            parts.append(
                "<tr class='recipe'>"
                f"<td>{e(entry.method)}</td><td>{e(entry.recipe)}</td><td>{e(entry.row)}</td><td>{e(entry.split)}</td>"
                f"<td>{e(metric)}</td><td class='score'>{mean:.2f} ± {std:.2f}</td><td>{len(entry.seeds)}</td>"
                f"<td>{'-' if paper is None else f'{paper:g}'}</td>"
                f"<td>{'-' if paper is None else f'{mean - paper:+.2f}'}</td><td>{_profile_cell(entry.profile)}</td>"
                f"<td>git {e(', '.join(entry.git_commits) or '-')}; runs {e(', '.join(r[:12] for r in entry.run_ids))}"
                "</td></tr>"
            )
    if not entries:
        parts.append("<tr><td colspan='11'>No recipe results yet: run <code>zsc reproduce</code>.</td></tr>")
    parts += [
        "</table><h2>Registered models</h2>",
        "<table id='models'><tr><th>model</th><th>version</th><th>aliases</th><th>dataset</th><th>real-test "
        "metrics</th><th>profile</th><th>lineage</th><th>report</th></tr>",
    ]
    for name, versions in sorted(models.items()):
        for v in versions:
            metrics = ", ".join(f"{k} {x}" for k, x in v.real_test.items() if k not in ("dataset", "time")) or "-"
            lineage = ", ".join(
                f"{k} {registry._short(k, x)}" for k, x in v.lineage.items() if k not in ("profile", "dataset.uri")
            )
            link = reports.get(name)
            parts.append(
                "<tr class='model'>"
                f"<td>{e(name)}</td><td>v{e(v.version)}</td><td>{e(', '.join('@' + a for a in v.aliases) or '-')}</td>"
                f"<td>{e(v.real_test.get('dataset', v.lineage.get('dataset.uri', '-')))}</td><td>{e(metrics)}</td>"
                f"<td>{_profile_cell(v.lineage.get('profile', ''))}</td><td>{e(lineage or '-')}</td>"
                f"<td>{f'<a href={chr(39)}{e(link)}#v{e(v.version)}{chr(39)}>review</a>' if link else '-'}</td></tr>"
            )
    if not models:
        parts.append("<tr><td colspan='8'>No registered models.</td></tr>")
    parts.append("</table></body></html>")
    return "\n".join(parts)


def write_leaderboard(folder: Path, client: Any = None) -> tuple[Path, list[RecipeEntry], int]:
    """Write every model's review report and ``folder/leaderboard.html`` (linked from the reports' index)."""
    client = client or tracking.client()
    folder.mkdir(parents=True, exist_ok=True)
    models: dict[str, list[registry.VersionSummary]] = {}
    reports: dict[str, str] = {}
    for rm in client.search_registered_models(max_results=1000):
        versions = registry.summarize_versions(rm.name, client)
        if not versions:
            continue
        models[rm.name] = versions
        path = folder / f"{rm.name}-review.html"
        registry.review(rm.name, path, client)
        reports[rm.name] = path.name
    entries = recipe_entries(client)
    page = folder / "leaderboard.html"
    page.write_text(leaderboard_html(entries, models, reports), encoding="utf-8")
    registry.write_report_index(folder)
    return page, entries, sum(map(len, models.values()))
