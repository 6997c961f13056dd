"""MLflow models-from-code file for zsc's downstream classifiers: the pyfunc wrapper.

MLflow copies this file into the model and executes it at load time; nothing is pickled. The model format and the
scoring code are the core's (``core/downstream_model.py``, stored beside this file as the model's code path), so
this file only adapts them to pyfunc: it imports torch, pandas, PIL, MLflow and that one module, and
``mlflow.pyfunc.load_model`` works without zsc installed.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

try:
    from zsc_classification.core import downstream_model
except ModuleNotFoundError:  # loaded by MLflow where zsc is not installed: the core file is in the model's code/
    import downstream_model  # type: ignore[no-redef]

# the helpers callers reached here before they moved into the core
FORMAT = downstream_model.FORMAT
eval_resize = downstream_model.eval_resize
normalize = downstream_model.normalize
preprocess = downstream_model.preprocess
to_uint8 = downstream_model.to_uint8


def model_code_path() -> str:
    """This file: the models-from-code file MLflow stores with every downstream model."""
    return str(Path(__file__).resolve())


def code_paths() -> list[str]:
    """What this file imports that MLflow must store beside it (the core's model format, zsc-free)."""
    return [str(Path(downstream_model.__file__).resolve())]


def signature() -> Any:
    """The serving contract: a column ``image`` of encoded images in; label, index and probabilities out."""
    from mlflow.models import ModelSignature
    from mlflow.types import DataType
    from mlflow.types.schema import Array, ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec(DataType.binary, "image")]),
        outputs=Schema(
            [
                ColSpec(DataType.string, "label"),
                ColSpec(DataType.long, "index"),
                ColSpec(DataType.double, "probability"),
                ColSpec(Array(DataType.double), "probabilities"),
            ]
        ),
    )


def input_example() -> pd.DataFrame:
    """One tiny PNG in the ``image`` column: stored with the model to document the serving input."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (127, 127, 127)).save(buffer, format="PNG")
    return pd.DataFrame({"image": [buffer.getvalue()]})


class DownstreamClassifier(downstream_model.DownstreamModel, mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: ``predict`` takes encoded images (bytes, a DataFrame column ``image`` of bytes) or a uint8
    array [N, H, W, 3] and returns one row per image: label, index, probability and all class probabilities."""

    def load_context(self, context: Any) -> None:
        self.load(context.artifacts)

    # DataFrame is the hint MLflow neither derives a schema from nor warns about. Through pyfunc the signature asks
    # for a DataFrame with an ``image`` column; called directly, lists of bytes and uint8 arrays work too.
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from PIL import Image

        if isinstance(model_input, pd.DataFrame):
            model_input = list(model_input["image"] if "image" in model_input else model_input.iloc[:, 0])
        if isinstance(model_input, np.ndarray) and model_input.dtype == np.uint8 and model_input.ndim == 4:
            images = list(model_input)
        else:
            items = [model_input] if isinstance(model_input, bytes | bytearray) else list(model_input)
            images = [Image.open(io.BytesIO(bytes(b))).convert("RGB") for b in items]
        probs = self.predict_proba(images)
        best = probs.argmax(dim=-1)
        names = self.class_names
        return pd.DataFrame(
            {
                "label": [names[i] for i in best.tolist()],
                "index": best.tolist(),
                "probability": probs.max(dim=-1).values.tolist(),
                "probabilities": probs.tolist(),
            }
        )


mlflow.models.set_model(DownstreamClassifier())
