"""zsc: data-free zero-shot image classification. This package is the shared library (runtime, codecs, models)."""

import os

# zsc never downloads weights behind a user's back: unless ZSC_HUB_ONLINE=1, the Hugging Face hub is read from its
# local cache only, so a missing model fails at once with one clear line instead of hanging on the network.
if os.environ.get("ZSC_HUB_ONLINE") != "1":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
# MLflow announces store creation and migrations at INFO; users see results, not plumbing.
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")

__version__ = "0.1.0"
