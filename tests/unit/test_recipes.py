"""Recipes (zsc.recipes) and the leaderboard page (zsc.leaderboard): the papers' numbers, placeholders, the
one-line preflight, the per-seed runner with a fake executor, mean ± std, and the HTML parsed back."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from zsc import leaderboard, recipes, registry
from zsc.cli.reproduce import SERVICE_OF
from zsc.errors import InvalidArgument


def test_every_recipe_loads_with_three_seeds_and_the_tables_the_issue_names() -> None:
    loaded = recipes.load_recipes()
    assert {"dfzsl-gzsl", "diffusion-classifier", "bag-of-tricks", "lite-cifar10-gzsl", "ship-base-to-new",
            "dfzsl-base-to-new"} <= set(loaded)  # fmt: skip
    for recipe in loaded.values():
        assert len(recipe.seeds) >= 3, recipe.name
        assert recipe.rows and recipe.steps, recipe.name
        for command in (*recipe.setup, *recipe.steps):  # every command is a real zsc command
            assert command[0] in {*SERVICE_OF, "fit-teacher", "data"}  # the last two need no service
    assert [r.name for r in loaded["dfzsl-gzsl"].rows] == ["AWA2", "CUB", "SUN", "FLO", "APY"]


def test_paper_numbers_are_methods_md_and_absent_ones_stay_none() -> None:
    dc = recipes.get_recipe("diffusion-classifier")
    got = {r.name: r.paper["top1"] for r in dc.rows}
    assert got == {
        "CIFAR-10": 88.5,
        "Food101": 77.7,
        "ImageNet": 61.4,
        "CIFAR-100": 67.7,
        "Pets": 87.3,
        "Flowers": 66.3,
        "STL-10": 95.4,
        "Aircraft": 26.4,
        "ObjectNet": 43.4,
    }
    tricks = {r.name: r.paper["top1"] for r in recipes.get_recipe("bag-of-tricks").rows}
    assert tricks == {"CIFAR-10 class prompt": 60.5, "CIFAR-10 tricks": 81.0, "CIFAR-100 tricks": None,
                      "EuroSAT tricks": None}  # fmt: skip
    # methods.md gives no DFZSL GZSL numbers: none is invented
    assert all(v is None for r in recipes.get_recipe("dfzsl-gzsl").rows for v in r.paper.values())


COOP_DATASETS = ["ImageNet", "Caltech101", "OxfordPets", "StanfordCars", "Flowers102", "Food101", "FGVCAircraft",
                 "SUN397", "DTD", "EuroSAT", "UCF101"]  # fmt: skip


@pytest.mark.parametrize("name", ["ship-base-to-new", "dfzsl-base-to-new"])
def test_base_to_new_recipes_list_the_11_coop_datasets_with_no_invented_numbers(name: str) -> None:
    recipe = recipes.get_recipe(name)
    assert [r.name for r in recipe.rows] == COOP_DATASETS and recipe.metrics == ("B", "N", "HM")
    # methods.md has only 11-dataset means of other methods for SHIP and nothing for DFZSL base-to-new
    assert all(v is None for r in recipe.rows for v in r.paper.values())
    assert recipe.profile == "paper" and len(recipe.seeds) >= 3
    last = recipe.steps[-1]
    assert last[0] == "evaluate-gzsl" and last[last.index("--unseen") + 1] == "@{coop}/new.txt"
    if name == "ship-base-to-new":  # SHIP's released configs: 200 epochs, ImageNet 20
        epochs = {r.name: r.vars["epochs"] for r in recipe.rows}
        assert epochs.pop("ImageNet") == "20" and set(epochs.values()) == {"200"}
    else:  # the recovery preset of each dataset exists
        from zsc_recovery.core.recover import PRESETS

        assert all(r.vars["preset"] in PRESETS for r in recipe.rows)


@pytest.mark.parametrize("name", ["ship-base-to-new", "dfzsl-base-to-new"])
def test_base_to_new_without_the_import_stops_with_one_line(name: str, tmp_path: Path, capsys) -> None:
    from zsc.cli.main import main

    work = tmp_path / "w"
    code = main(["reproduce", name, "--row", "oxfordpets", "--data", str(tmp_path / "d"), "--work", str(work)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert err[0] == (
        f"zsc: recipe {name} row OxfordPets: missing {tmp_path / 'd/coop/oxfordpets/train/base'}; get it with: "
        "zsc data import coop --split-file oxford_pets/split_zhou_OxfordPets.json --images oxford_pets/images --out "
        f"{tmp_path / 'd/coop/oxfordpets'}"
    )
    assert not work.exists()  # nothing ran


def test_placeholders_fill_vars_that_use_other_vars() -> None:
    row = recipes.Row("x", {}, {"real": "{datasets}/c10", "file": "{real}/classes.txt"})
    values = recipes.placeholders(row, work=Path("/w"), data=Path("/d"), datasets=Path("/ds"), seed=2)
    assert values["file"] == "/ds/c10/classes.txt" and values["work"] == "/w/seed2" and values["seed"] == "2"
    with pytest.raises(InvalidArgument, match=r"\{nope\}"):
        recipes.fill("--x {nope}", values)


def test_a_missing_file_or_model_is_one_line_with_the_fix(tmp_path: Path) -> None:
    recipe = recipes.get_recipe("dfzsl-gzsl")
    row = recipe.row("awa2")
    values = recipes.placeholders(row, work=tmp_path / "w", data=tmp_path / "data")
    with pytest.raises(recipes.RecipeUnavailable) as err:
        recipes.check_row(recipe, row, values)
    line = str(err.value)
    assert "\n" not in line and str(tmp_path / "data/gzsl/awa2/trainval.safetensors") in line
    assert "zsc data import gzsl --splits AWA2/clip_splits.mat --image-features AWA2/ViTB16.mat" in line
    for name in ("trainval", "test"):
        (tmp_path / "data/gzsl/awa2").mkdir(parents=True, exist_ok=True)
        (tmp_path / f"data/gzsl/awa2/{name}.safetensors").write_bytes(b"")

    def no_weights(w: recipes.Weights) -> None:
        raise RuntimeError(f"CLIP model {w.ref!r} is not available")

    with pytest.raises(recipes.RecipeUnavailable, match=r"^recipe dfzsl-gzsl row AWA2: CLIP model 'open_clip:ViT-B-16"):
        recipes.check_row(recipe, row, values, no_weights)
    with pytest.raises(InvalidArgument, match="has no row 'XYZ'"):
        recipe.row("XYZ")


def _toy_recipe() -> recipes.Recipe:
    return recipes.Recipe(
        name="toy",
        title="toy table",
        method="m",
        profile="tiny",
        split="s",
        metrics=("S", "H"),
        rows=(recipes.Row("A", {"S": 50.0, "H": None}, {"k": "3"}),),
        setup=(("prep", "{row_work}"),),
        steps=(("fit", "{work}", "{seed}", "{k}"),),
        result="{work}/m.json",
    )


def test_run_row_runs_setup_once_steps_per_seed_and_reads_each_result(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def execute(argv: list[str]) -> str:
        calls.append(argv)
        if argv[0] == "fit":
            seed = int(argv[2])
            Path(argv[1], "m.json").write_text(json.dumps({"S": 0.1 * (seed + 1), "H": 0.5, "extra": 1}))
            return f"trained\nMLflow run: {seed:032x}\nclassifier: models:/x/1 (run {'f' * 32}, files ...)\n"
        return "ok"

    results = recipes.run_row(_toy_recipe(), _toy_recipe().rows[0], [0, 1, 2], execute, work=tmp_path, data=tmp_path)
    assert [c[0] for c in calls] == ["prep", "fit", "fit", "fit"]
    assert calls[1] == ["fit", str(tmp_path / "seed0"), "0", "3"]
    assert [r.metrics for r in results] == [{"S": 0.1, "H": 0.5}, {"S": 0.2, "H": 0.5}, {"S": 0.1 * 3, "H": 0.5}]
    assert results[1].step_runs == [f"{1:032x}", "f" * 32]

    text = recipes.table(_toy_recipe(), {"A": results}, {"A": ["a" * 32, "b" * 32, "c" * 32]})
    rows = [line for line in text.splitlines() if line.startswith("| A |")]
    # S: 10, 20, 30 % -> 20.00 ± 10.00 against the paper's 50: -30.00; H has no paper number
    assert rows[0] == "| A | S | 50.0 | 20.00 ± 10.00 | 3 | -30.00 | aaaaaaaaaaaa, bbbbbbbbbbbb, cccccccccccc |"
    assert rows[1].startswith("| A | H | - | 50.00 ± 0.00 | 3 | - |")


def test_a_step_that_writes_no_result_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(recipes.RecipeUnavailable, match=r"its last step wrote no .*m\.json"):
        recipes.run_row(_toy_recipe(), _toy_recipe().rows[0], [0], lambda argv: "", work=tmp_path, data=tmp_path)


def test_mean_std_is_the_sample_std() -> None:
    assert recipes.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert recipes.mean_std([4.0]) == (4.0, 0.0)


class _Cells(HTMLParser):
    """Rows of the page's tables by table id, each a list of cell texts, and the links."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.links: list[str] = []
        self._table = ""
        self._row: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id") or ""
            self.tables[self._table] = []
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._row.append("")
        elif tag == "a":
            self.links.append(a.get("href") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr" and self._row is not None:
            self.tables[self._table].append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._row:
            self._row[-1] += data


def test_leaderboard_html_lists_recipes_and_models_side_by_side() -> None:
    entry = leaderboard.RecipeEntry(
        recipe="toy", row="CIFAR-10", method="dfzsl", split="5/5", profile="tiny",
        metrics={"H": (12.3456, 1.5)}, paper={"H": 20.0}, seeds=[0, 1, 2], run_ids=["a" * 32, "b" * 32, "c" * 32],
        git_commits=["abc1234567"],
    )  # fmt: skip
    version = registry.VersionSummary(
        version="2", aliases=["champion"], created="", run_id="r", real_test={"top1": "0.1000", "dataset": "c10"},
        validation={}, params={}, lineage={"profile": "lite", "git_commit": "0123456789abcdef", "seed": "0"},
    )  # fmt: skip
    page = leaderboard.leaderboard_html([entry], {"zsc-gzsl": [version]}, {"zsc-gzsl": "zsc-gzsl-review.html"})
    cells = _Cells()
    cells.feed(page)
    header, row = cells.tables["recipes"]
    record = dict(zip(header, row, strict=True))
    assert record["zsc mean ± std"] == "12.35 ± 1.50" and record["paper"] == "20" and record["zsc - paper"] == "-7.65"
    assert record["method"] == "dfzsl" and record["dataset"] == "CIFAR-10" and record["seeds"] == "3"
    assert "chance level" in record["profile"] and "abc1234567" in record["lineage"]
    header, row = cells.tables["models"]
    record = dict(zip(header, row, strict=True))
    assert record["real-test metrics"] == "top1 0.1000" and record["profile"] == "lite"
    assert "git_commit 0123456789" in record["lineage"] and record["dataset"] == "c10"
    assert cells.links == ["zsc-gzsl-review.html#v2"]
