"""`zsc reproduce` and `zsc report` through the real CLI: the one-line stops for missing data and weights, a recipe
run for real over 3 seeds against in-process tiny services, its MLflow runs, and the leaderboard page parsed back."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zsc import tracking
from zsc.cli.main import main


def test_missing_data_is_one_line_naming_the_import_command(tmp_path: Path, capsys) -> None:
    code = main(["reproduce", "dfzsl-gzsl", "--data", str(tmp_path / "data"), "--work", str(tmp_path / "w")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert err[0].startswith(f"zsc: recipe dfzsl-gzsl row AWA2: missing {tmp_path / 'data/gzsl/awa2/trainval'}")
    assert "get it with: zsc data import gzsl --splits AWA2/clip_splits.mat" in err[0]
    assert not (tmp_path / "w").exists()  # nothing ran


def test_missing_weights_are_one_line_naming_the_hub_repo(tmp_path: Path, capsys, monkeypatch) -> None:
    import huggingface_hub

    monkeypatch.delenv("ZSC_HUB_ONLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)  # an empty hub cache
    images = tmp_path / "cifar10-test"
    images.mkdir()
    code = main(["reproduce", "diffusion-classifier", "--row", "CIFAR-10", "--datasets", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert err[0].startswith("zsc: recipe diffusion-classifier row CIFAR-10: Stable Diffusion model")
    assert "`hf download stabilityai/stable-diffusion-2-base`" in err[0]


class _Rows(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._row: list[str] | None = None

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag == "tr":
            self._row = []
        elif tag == "td" and self._row is not None:
            self._row.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr" and self._row:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._row:
            self._row[-1] += data


@pytest.mark.slow
def test_a_recipe_runs_three_seeds_logs_them_and_the_leaderboard_shows_mean_and_std(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    for var in ("ZSC_CLASSIFICATION_ADDRESS", "ZSC_GENERATIVE_ADDRESS", "ZSC_RECOVERY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    rng = np.random.default_rng(0)
    for name in ("cat", "dog", "ship"):
        (tmp_path / "ds/imgs" / name).mkdir(parents=True)
        for i in range(2):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "ds/imgs" / name / f"{i}.png")
    recipe = {
        "name": "tiny-zeroshot",
        "title": "tiny CLIP zero-shot",
        "method": "clip",
        "profile": "tiny",
        "split": "all classes",
        "metrics": ["top1"],
        "requires": [{"path": "{datasets}/imgs", "get": "make it"}],
        "rows": [{"name": "toy", "paper": {"top1": 50.0}}],
        "steps": [
            ["zeroshot", "--method", "clip", "--profile", "tiny", "--data", "{datasets}/imgs",
             "--metrics-out", "{work}/m.json"]
        ],
        "result": "{work}/m.json",
    }  # fmt: skip
    (tmp_path / "tiny.json").write_text(json.dumps(recipe))
    args = ["reproduce", "--recipe-file", str(tmp_path / "tiny.json"), "--work", str(tmp_path / "w")]
    code = main([*args, "--datasets", str(tmp_path / "ds")])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    row = next(line for line in printed.out.splitlines() if line.startswith("| toy | top1 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    tops = [json.loads((tmp_path / f"w/tiny-zeroshot/toy/seed{s}/m.json").read_text())["top1"] for s in (0, 1, 2)]
    mean = 100 * sum(tops) / 3
    assert cells[2] == "50.0" and cells[3].startswith(f"{mean:.2f} ± ") and cells[4] == "3"
    assert cells[5] == f"{mean - 50.0:+.2f}"
    assert "chance level by design" in printed.out

    client = tracking.client()
    experiment = client.get_experiment_by_name("zsc-recipes")
    runs = client.search_runs([experiment.experiment_id], "tags.`zsc.recipe` = 'tiny-zeroshot'")
    assert sorted(r.data.tags["zsc.seed"] for r in runs) == ["0", "1", "2"]
    for run in runs:
        assert run.data.tags["zsc.recipe.row"] == "toy" and run.data.tags["zsc.profile"] == "tiny"
        assert run.info.run_id[:12] in cells[6]
        # the zero-shot evaluation the seed ran is named, and exists
        assert client.get_run(run.data.tags["zsc.recipe.runs"].split(",")[0]).info.status == "FINISHED"

    code = main(["report", "--html-dir", str(tmp_path / "reports")])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert f"tiny-zeroshot / toy [tiny, 3 seeds]: top1 {mean:.2f} ± " in printed.out
    parser = _Rows()
    parser.feed((tmp_path / "reports/leaderboard.html").read_text())
    mine = [r for r in parser.rows if r[1:3] == ["tiny-zeroshot", "toy"]]
    assert len(mine) == 1 and mine[0][5].startswith(f"{mean:.2f} ± ") and "chance level" in mine[0][9]
    assert "leaderboard.html" in (tmp_path / "reports/index.html").read_text()


# Sizes cut so a seed takes seconds on the tiny profile; the commands, flags and files are the recipe's own.
_CUTS = {
    "train-generator": ["--epochs", "2"],
    "recover": ["--epochs", "5", "--num", "20"],
    "train-gzsl": ["--epochs", "2"],
    "finetune": ["--epochs", "2"],  # a later flag wins: the recipe's --epochs stays in the argv
}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ship-base-to-new", "dfzsl-base-to-new"])
def test_a_base_to_new_recipe_runs_end_to_end_on_a_coop_import(name: str, tmp_path: Path, capsys, monkeypatch) -> None:
    """Every command of the recipe, with its flags and files, chains on tiny models over an imported CoOp split."""
    for var in ("ZSC_CLASSIFICATION_ADDRESS", "ZSC_GENERATIVE_ADDRESS", "ZSC_RECOVERY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    rng = np.random.default_rng(0)
    split: dict[str, list[list[object]]] = {"train": [], "val": [], "test": []}
    for label, cname in enumerate(["cat", "dog", "F/A-18", "sea_lion"]):  # 2 base, 2 new; one name needs a map
        (tmp_path / "src" / f"c{label}").mkdir(parents=True)
        for k in range(19):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / f"src/c{label}/{k}.png")
            split["train" if k < 16 else "val" if k < 17 else "test"].append([f"c{label}/{k}.png", label, cname])
    (tmp_path / "split.json").write_text(json.dumps(split))
    coop = tmp_path / "data/coop/toy"
    imported = ["data", "import", "coop", "--split-file", str(tmp_path / "split.json"), "--images"]
    assert main([*imported, str(tmp_path / "src"), "--out", str(coop)]) == 0

    from zsc import recipes

    recipe = json.loads((recipes.RECIPE_DIR / f"{name}.json").read_text())
    row = dict(recipe["rows"][2], name="toy")
    row["vars"] = {**row["vars"], "coop": "{data}/coop/toy"}

    def tiny(cmd: list[str]) -> list[str]:
        cmd = ["tiny" if a == "paper" else a for a in cmd]
        if "--per-class" in cmd and cmd[0] == "generate-features":
            cmd[cmd.index("--per-class") + 1] = "20"
        return cmd + _CUTS.get(cmd[0], [])

    recipe.update(profile="tiny", seeds=[0], weights=[], rows=[row])
    recipe.update(setup=[tiny(c) for c in recipe["setup"]], steps=[tiny(c) for c in recipe["steps"]])
    (tmp_path / "r.json").write_text(json.dumps(recipe))
    run = ["reproduce", "--recipe-file", str(tmp_path / "r.json"), "--work", str(tmp_path / "w"), "--seeds", "0"]
    code = main([*run, "--data", str(tmp_path / "data")])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    metrics = json.loads((tmp_path / f"w/{name}/toy/seed0/metrics.json").read_text())
    b, n = metrics["B"], metrics["N"]
    assert metrics["HM"] == pytest.approx(2 * b * n / (b + n) if b + n else 0.0)
    for metric in ("B", "N", "HM"):
        assert f"| toy | {metric} | - | {100 * metrics[metric]:.2f} ± 0.00 | 1 | - |" in printed.out
