"""zsc: data-free zero-shot image classification. This package is the shared library (runtime, codecs, models)."""

import os

# zsc never downloads weights behind a user's back: unless ZSC_HUB_ONLINE=1, the Hugging Face hub is read from its
# local cache only, so a missing model fails at once with one clear line instead of hanging on the network.
if os.environ.get("ZSC_HUB_ONLINE") != "1":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
# MLflow announces store creation and migrations at INFO; users see results, not plumbing.
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
# Back torch's large CPU buffers (>= 2 MB) with transparent huge pages: a fresh [100, 600, 512] float32 buffer costs
# ~50 ms of page faults with 4 KB pages and ~8 ms with huge pages (bench/vmf.py). torch reads this once, when it
# loads, so it only takes effect where zsc is imported before torch (the `zsc` command, the services, the benches).
# Set THP_MEM_ALLOC_ENABLE=0 to opt out.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"
