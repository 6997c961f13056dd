"""Writes shared/zsc/cli/config_defaults.json: the defaults of every core setting a `zsc` option sets, which the CLI's
help shows (``zsc.cli.common.default_of``), or checks the committed file for drift (``--check``, a unit test).

    python scripts/cli_defaults.py           # after changing a core config's default
    python scripts/cli_defaults.py --check   # exit 1 when the committed file differs

An option left unset is not sent, so the service applies its core config's default: the core is the one source, and
this file is its copy for the CLI, which may import neither a service (tests/unit/test_layering.py) nor torch
(tests/unit/test_cli_startup.py). It lives outside the library for that reason: it imports the cores.

The file maps a name to {field: default}: a core config class by its name, a config one factory builds by
``Class[variant]`` (FineTuneConfig.for_method), a core function by its name (its keyword defaults), a core module by
its name (the constants a config's None stands for).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "shared" / "zsc" / "cli" / "config_defaults.json"


def _values(source: Any) -> dict[str, Any]:
    """{field: default} of a config dataclass, the fields of a config instance, or a function's keyword defaults."""
    from zsc.config import config_defaults

    if isinstance(source, dict):  # named core constants, as they are
        return source
    if isinstance(source, type):
        return config_defaults(source)
    if dataclasses.is_dataclass(source):
        return {f.name: getattr(source, f.name) for f in dataclasses.fields(source)}
    if callable(source):
        params = inspect.signature(source).parameters.values()
        return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    raise TypeError(f"no defaults to read from {source!r}")


def sources() -> dict[str, Any]:
    """Name -> what its defaults are read from: every core config (and function) the CLI's options map to."""
    from zsc_classification.core.diffusion_classifier import DiffusionClassifierOptions
    from zsc_classification.core.downstream import TrainConfig
    from zsc_generative.core.clswgan import CLSWGANConfig
    from zsc_generative.core.common import GeneratorConfig
    from zsc_generative.core.finetune import METHODS, FineTuneConfig
    from zsc_generative.core.gzsl import GZSLConfig
    from zsc_generative.core.ship import ShipConfig
    from zsc_generative.core.tfvaegan import TFVAEGANConfig
    from zsc_recovery.core.flpt import FlptConfig
    from zsc_recovery.core.recover import RecoveryConfig, teacher_from_weights
    from zsc_recovery.core.teacher import fit_teacher
    from zsc_synthesis.core import writer
    from zsc_synthesis.core.dataset import DatasetJob
    from zsc_synthesis.core.generator import GenerationConfig
    from zsc_synthesis.core.planner import TrickConfig

    configs: list[Callable[..., Any]] = [
        GeneratorConfig,  # train-generator --select-* (both GAN kinds)
        CLSWGANConfig,  # train-generator --kind clswgan
        TFVAEGANConfig,  # train-generator --kind tfvaegan
        ShipConfig,  # train-generator --kind ship_vae
        GZSLConfig,  # train-gzsl
        FineTuneConfig,  # finetune
        RecoveryConfig,  # recover
        FlptConfig,  # align
        TrainConfig,  # train-downstream
        DiffusionClassifierOptions,  # zeroshot --method diffusion
        GenerationConfig,  # synthesize (sampler)
        TrickConfig,  # synthesize (guidance)
        DatasetJob,  # synthesize (chunk grid)
        fit_teacher,  # fit-teacher
        teacher_from_weights,  # recover --temperature
    ]
    found: dict[str, Any] = {c.__name__: c for c in configs}
    # finetune's unset settings are the method's (and Tip-Adapter-F's preset's), not the dataclass's.
    found |= {f"FineTuneConfig[{m}]": FineTuneConfig.for_method(m) for m in METHODS}
    # DatasetJob.batch_size None: the directory's grid, or this one for a new directory.
    found["writer"] = {"DEFAULT_BATCH_SIZE": writer.DEFAULT_BATCH_SIZE}
    return found


def render() -> str:
    """The file's text: sorted JSON, so a default's change is a one-line diff."""
    data = {name: _values(source) for name, source in sources().items()}
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed file differs from the cores")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.is_file() or OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT.relative_to(REPO)} differs from the cores: run scripts/cli_defaults.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
