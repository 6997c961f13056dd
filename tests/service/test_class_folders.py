"""Issue #20, items 1 and 2, as the user hit them: class names are matched to folders by name, never by position,
and class lists are refused (never silently rewritten) by the client and the server alike."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from zsc import codec
from zsc.classification.v1 import classification_pb2 as pb
from zsc.classification.v1 import classification_pb2_grpc as pb_grpc
from zsc.classification.v1 import downstream_pb2 as ds_pb
from zsc.classification.v1 import downstream_pb2_grpc as ds_grpc
from zsc.errors import InvalidArgument
from zsc.runtime.client import unpack, watch

pytestmark = pytest.mark.service


def _folder(root: Path, counts: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / name / f"{i:05d}.png")
    return root


def _last_line(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]  # after the line naming the server that answered


def test_given_names_in_another_order_keep_every_image_its_true_class(classification_channel, data_root) -> None:
    """``--classes dog,cat`` over cat/ (3 images) and dog/ (2): the cat images are scored as true "cat"."""
    root = _folder(data_root / "folders-swapped", {"cat": 3, "dog": 2})
    stub = pb_grpc.ClassificationStub(classification_channel)
    request = pb.EvaluateZeroShotRequest(data_uri=str(root), class_names=["dog", "cat"], batch_size=8)
    result = unpack(watch(classification_channel, stub.EvaluateZeroShot(request)), pb.EvaluationResult)
    assert list(result.class_names) == ["dog", "cat"]
    assert codec.decode(result.confusion).sum(axis=1).tolist() == [2, 3]  # rows are true classes, in the given order


def test_a_typo_folder_is_refused_naming_the_class_and_the_folder(classification_channel, data_root, capsys) -> None:
    from zsc.cli.main import main

    root = _folder(data_root / "folders-typo", {"cat": 1, "dgo": 1})
    with pytest.raises(grpc.RpcError) as err:
        pb_grpc.ClassificationStub(classification_channel).EvaluateZeroShot(
            pb.EvaluateZeroShotRequest(data_uri=str(root), class_names=["dog", "cat"])
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "missing class ['dog'] (no folder of that name), extra folder ['dgo'] (no such class)" in (
        err.value.details()
    )
    assert main(["zeroshot", "--method", "clip", "--data", str(root), "--classes", "dog,cat"]) == 1
    line = _last_line(capsys)
    assert line.startswith("zsc: INVALID_ARGUMENT: class_names do not match") and "['dgo']" in line


def test_an_extra_folder_and_an_explicit_map(classification_channel, data_root) -> None:
    stub = pb_grpc.ClassificationStub(classification_channel)
    root = _folder(data_root / "folders-extra", {"airplane": 2, "cat": 1, "cow": 1})
    with pytest.raises(grpc.RpcError) as err:
        stub.EvaluateZeroShot(pb.EvaluateZeroShotRequest(data_uri=str(root), class_names=["plane", "cat"]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = err.value.details()
    assert "missing class ['plane']" in details and "extra folder ['airplane', 'cow']" in details
    request = pb.EvaluateZeroShotRequest(
        data_uri=str(root), class_names=["plane", "cat", "cow"], folder_to_class={"airplane": "plane"}
    )
    result = unpack(watch(classification_channel, stub.EvaluateZeroShot(request)), pb.EvaluationResult)
    assert list(result.class_names) == ["plane", "cat", "cow"]
    assert codec.decode(result.confusion).sum(axis=1).tolist() == [2, 1, 1]


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        ("cat,,dog", "zsc: --classes[1] is empty"),
        ("cat, dog", "zsc: class name ' dog' in --classes has leading or trailing whitespace"),
        ("cat,dog,cat", "zsc: class 'cat' appears twice in --classes"),
    ],
)
def test_cli_class_lists_are_refused_before_any_call(data_root, capsys, classes: str, message: str) -> None:
    from zsc.cli.main import main

    root = _folder(data_root / "folders-cli", {"cat": 1, "dog": 1})
    assert main(["zeroshot", "--method", "clip", "--data", str(root), "--classes", classes]) == 1
    assert capsys.readouterr().err.strip() == message


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["cat", "", "dog"], "class_names[1] is empty"),
        (["cat", " dog"], "class name ' dog' in class_names has leading or trailing whitespace"),
        (["cat", "dog", "cat"], "class 'cat' appears twice in class_names"),
    ],
)
def test_the_server_applies_the_same_rule(classification_channel, data_root, names: list[str], message: str) -> None:
    root = _folder(data_root / "folders-cli", {"cat": 1, "dog": 1})
    with pytest.raises(grpc.RpcError) as err:
        pb_grpc.ClassificationStub(classification_channel).EvaluateZeroShot(
            pb.EvaluateZeroShotRequest(data_uri=str(root), class_names=names)
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details() == message


def test_training_refuses_a_synthetic_folder_that_is_not_its_request(classification_channel, data_root) -> None:
    """A stray ``dgo/`` in a synthesis directory would become an eleventh class of the trained model."""
    root = _folder(data_root / "folders-synthetic", {"cat": 2, "dog": 2, "dgo": 2})
    request_json = {"format": "zsc-synthesis/1", "request": {"classes": [{"name": "cat"}, {"name": "dog"}]}}
    (root / "request.json").write_text(json.dumps(request_json), encoding="utf-8")
    stub = ds_grpc.DownstreamStub(classification_channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.TrainClassifier(ds_pb.TrainClassifierRequest(data_uri=str(root), epochs=1))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("the synthesis request's classes do not match the class folders")
    assert "extra folder ['dgo'] (no such class)" in err.value.details()


def test_a_synthesis_resume_refuses_a_folder_of_no_requested_class(tmp_path: Path) -> None:
    from zsc_synthesis.core import writer

    header = {
        "format": writer.FORMAT,
        "fingerprint": "f",
        "model": "m",
        "batch_size": 8,
        "request": {"classes": [{"name": "cat", "description": ""}, {"name": "dog", "description": ""}]},
    }
    (tmp_path / writer.REQUEST).write_text(json.dumps(header), encoding="utf-8")
    _folder(tmp_path, {"cat": 1})
    assert writer._check_dir(tmp_path, header, None) == 8  # dog/ not generated yet: a resume may continue
    _folder(tmp_path, {"dgo": 1})
    with pytest.raises(InvalidArgument, match=r"holds folders of no class in this request: \['dgo'\]"):
        writer._check_dir(tmp_path, header, None)
