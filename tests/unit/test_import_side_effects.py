"""Importing zsc, and every module of the library, changes no environment variable and not the root logger: tuning
and quieting are opt-ins (``zsc.runtime.tuning``, ``zsc.models.hub.stay_offline``, the MLflow client)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "zsc"

# Runs in a fresh interpreter with a bare environment. Third-party packages zsc imports are loaded first, so only
# what zsc's own modules do is compared.
PROBE = r"""
import importlib, json, logging, os, sys
def state():
    root = logging.getLogger()
    return dict(os.environ), [type(h).__name__ for h in root.handlers], root.level
for name in ("torch", "grpc", "mlflow", "huggingface_hub", "open_clip", "diffusers", "timm", "transformers"):
    importlib.import_module(name)
before = state()
import zsc
after_zsc = state()
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
after_all = state()
print(json.dumps({"zsc": after_zsc == before, "all": after_all == before,
                  "changed": sorted(set(after_all[0].items()) ^ set(before[0].items())),
                  "handlers": [before[1], after_all[1]], "levels": [before[2], after_all[2]]}))
"""


def _library_modules() -> list[str]:
    names = []
    for path in sorted(SHARED.rglob("*.py")):
        parts = list(path.relative_to(SHARED).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if parts and parts[-1] != "__main__":
            names.append(".".join(["zsc", *parts]))
    return names


@pytest.mark.slow
def test_importing_the_library_leaves_environment_and_root_logger_alone() -> None:
    modules = _library_modules()
    assert len(modules) > 40 and "zsc.registry" in modules and "zsc.cli.main" in modules
    env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "PYTHONHASHSEED": "0"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(modules)], capture_output=True, text=True, env=env, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {
        "zsc": True,
        "all": True,
        "changed": [],
        "handlers": [result["handlers"][0]] * 2,
        "levels": [result["levels"][0]] * 2,
    }


def test_the_opt_ins_do_what_they_say(monkeypatch: pytest.MonkeyPatch) -> None:
    from zsc.models import hub
    from zsc.runtime.tuning import apply_cpu_tuning

    if "huggingface_hub.constants" in sys.modules:  # stay_offline sets it too; give it back afterwards
        constants = sys.modules["huggingface_hub.constants"]
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", constants.HF_HUB_OFFLINE)
    monkeypatch.delenv("ZSC_HUB_ONLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    hub.stay_offline()
    assert hub.hub_online() is False
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    monkeypatch.setenv("ZSC_HUB_ONLINE", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    hub.stay_offline()
    assert "HF_HUB_OFFLINE" not in os.environ and hub.hub_online() is True
    with pytest.raises(ValueError, match="threads must be >= 0"):
        apply_cpu_tuning(-1)
