"""Class lists are parsed one way, and class names are matched to folders by name (issue #20, items 1 and 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from zsc.cli.common import CommandError, parse_class_map, parse_names
from zsc.data import ImageFolder, check_class_names, match_class_folders
from zsc.errors import InvalidArgument
from zsc.features import FeatureSet


def _folder(root: Path, counts: dict[str, int]) -> Path:
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (4, 4), (i, 0, 0)).save(root / name / f"{i:03d}.png")
    return root


# ------------------------------------------------------------------------------------------------- one rule for lists
@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["cat", "", "dog"], r"^--classes\[1\] is empty$"),
        (["cat", " dog"], r"^class name ' dog' in --classes has leading or trailing whitespace$"),
        (["cat", "dog "], r"^class name 'dog ' in --classes has leading or trailing whitespace$"),
        (["cat", "dog", "cat"], r"^class 'cat' appears twice in --classes$"),
        (["cat", "d\tog"], "contains control characters"),
        ([], r"^--classes is empty$"),
    ],
)
def test_check_class_names_refuses_and_never_rewrites(names: list[str], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        check_class_names(names, "--classes")


def test_check_class_names_keeps_names_as_given() -> None:
    assert check_class_names(["sea turtle", "cat"]) == ("sea turtle", "cat")
    with pytest.raises(InvalidArgument, match="not one string"):
        check_class_names("cat,dog")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("cat,,dog", r"--classes\[1\] is empty"),
        ("cat,dog,", r"--classes\[2\] is empty"),
        ("cat, dog", "class name ' dog' in --classes has leading or trailing whitespace"),
        ("cat,dog,cat", "class 'cat' appears twice in --classes"),
    ],
)
def test_cli_class_lists_are_refused_as_the_server_refuses_them(value: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_names(value, "--classes")


def test_cli_class_list_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "names.txt"
    path.write_text("sea turtle\n\ncat\n", encoding="utf-8")
    assert parse_names(f"@{path}", "--classes") == ["sea turtle", "cat"]  # blank lines are no entries
    path.write_text("cat\ncat \n", encoding="utf-8")
    with pytest.raises(InvalidArgument, match="'cat ' in --classes has leading or trailing whitespace"):
        parse_names(f"@{path}", "--classes")
    with pytest.raises(CommandError, match="no such --classes file"):
        parse_names(f"@{tmp_path / 'missing'}", "--classes")


def test_cli_class_map() -> None:
    assert parse_class_map("n01440764=tench,airplane=plane") == {"n01440764": "tench", "airplane": "plane"}
    assert parse_class_map("a=x=y") == {"a": "x=y"}  # the first '=' separates
    for bad, message in [
        ("airplane", "takes FOLDER=NAME"),
        ("=plane", "takes FOLDER=NAME"),
        ("a=x,a=y", "maps folder 'a' twice"),
        ("a=x,b=x", "class 'x' appears twice in --class-map"),
        ("a= x", "leading or trailing whitespace"),
    ]:
        with pytest.raises((CommandError, InvalidArgument), match=message):
            parse_class_map(bad)


def test_one_duplicate_message_everywhere() -> None:
    """Every place that refuses a repeated class name says so in the same words and names the class."""
    from zsc_classification.core.diffusion_classifier import _check_class_names
    from zsc_classification.core.prompts import validate_class_names
    from zsc_synthesis.core.planner import normalize_classes

    features = FeatureSet(torch.zeros(2, 3), torch.tensor([0, 1]), ["cat", "cat"], torch.zeros(2, 3))
    checks = {
        "class_names": [
            lambda: validate_class_names(["cat", "dog", "cat"]),
            lambda: _check_class_names(["cat", "dog", "cat"]),
            features.validate,
        ],
        "classes": [lambda: normalize_classes(["cat", "dog", "cat"])],
        "--classes": [lambda: parse_names("cat,dog,cat", "--classes")],
    }
    for field, calls in checks.items():
        for call in calls:
            with pytest.raises(ValueError) as err:
                call()
            assert str(err.value) == f"class 'cat' appears twice in {field}"


# -------------------------------------------------------------------------------------- names matched to folders
def test_given_order_is_the_label_order_and_folders_match_by_name() -> None:
    assert match_class_folders(["cat", "dog"], ["dog", "cat"]) == (("dog", "cat"), [1, 0])
    assert match_class_folders(["cat", "dog"]) == (("cat", "dog"), [0, 1])  # no names: the sorted folders


@pytest.mark.parametrize(
    ("folders", "names", "message"),
    [
        (["cat", "dgo"], ["dog", "cat"], r"missing class \['dog'\] \(no folder of that name\), extra folder \['dgo'\]"),
        (["cat", "dog", "cow"], ["dog", "cat"], r"extra folder \['cow'\] \(no such class\);"),
        (["cat"], ["dog", "cat"], r": missing class \['dog'\] \(no folder of that name\);"),
        (["airplane", "cat"], ["plane", "cat"], r"missing class \['plane'\].*extra folder \['airplane'\]"),
    ],
)
def test_a_mismatch_names_the_missing_class_and_the_extra_folder(folders, names, message) -> None:
    with pytest.raises(InvalidArgument, match=message) as err:
        match_class_folders(folders, names, root="/d")
    assert str(err.value).startswith("class_names do not match the class folders of /d") and "\n" not in str(err.value)


def test_an_explicit_map_renames_folders() -> None:
    assert match_class_folders(["airplane", "cat"], ["cat", "plane"], {"airplane": "plane"}) == (
        ("cat", "plane"),
        [1, 0],
    )
    assert match_class_folders(["n01", "n02"], [], {"n01": "tench", "n02": "goldfish"}) == (
        ("tench", "goldfish"),
        [0, 1],
    )
    with pytest.raises(InvalidArgument, match=r"folder_to_class names folders that /d does not hold: \['airplan'\]"):
        match_class_folders(["airplane", "cat"], ["plane", "cat"], {"airplan": "plane"}, root="/d")
    with pytest.raises(InvalidArgument, match="folders 'a' and 'b' of /d both hold class 'b'"):
        match_class_folders(["a", "b"], [], {"a": "b"}, root="/d")


def test_image_folder_labels_follow_the_given_names(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"cat": 3, "dog": 2})
    plain = ImageFolder.open(root)
    assert plain.classes == ["cat", "dog"] == plain.folders
    swapped = ImageFolder.open(root, class_names=["dog", "cat"])
    assert swapped.classes == ["dog", "cat"] == swapped.folders
    # every image keeps its true class: the cat images are labelled "cat", whatever its index
    assert all(swapped.classes[label] == path.parent.name for path, label in swapped.samples)
    assert [label for _, label in swapped.samples] == [0, 0, 1, 1, 1]
    # a limit keeps the same images whatever order the names came in
    assert {p for p, _ in ImageFolder.open(root, 3, ["dog", "cat"]).samples} == {
        p for p, _ in ImageFolder.open(root, 3).samples
    }
    mapped = ImageFolder.open(root, class_names=["kitten", "dog"], folder_to_class={"cat": "kitten"})
    assert mapped.classes == ["kitten", "dog"] and mapped.folders == ["cat", "dog"]
    assert mapped.mapped_folders() == {"cat": "kitten"} and swapped.mapped_folders() == {}
    with pytest.raises(InvalidArgument, match=r"missing class \['dog'\].*extra folder \['dgo'\]"):
        ImageFolder.open(_folder(tmp_path / "typo", {"cat": 1, "dgo": 1}), class_names=["dog", "cat"])
