"""The CLI's help shows the core configs' defaults from one generated file, never a copy of its own (#17 item 6).

An option left unset is not sent, so the service applies its core config's default; the help reads that default
from shared/zsc/cli/config_defaults.json (``zsc.cli.common.default_of``), which scripts/cli_defaults.py writes from
the cores. Here: the file equals what the cores say, and no help string writes a number after "default" itself.
"""

from __future__ import annotations

import argparse
import ast
import re
import runpy
from pathlib import Path

import pytest

from zsc.cli.common import core_defaults, default_of, default_per
from zsc.cli.main import build_parser

REPO = Path(__file__).resolve().parents[2]
CLI = REPO / "shared" / "zsc" / "cli"
SCRIPT = REPO / "scripts" / "cli_defaults.py"
# "default 64", "default: 0.5", "(default 1e-4)", "defaults to 3": a number written where a default is named.
LITERAL_DEFAULT = re.compile(r"\bdefaults?(?:\s+to)?[:\s]+[-+]?\.?\d", re.IGNORECASE)
# Help strings that may write a default's number: none of them is a core config's (module, option) -> why.
NOT_A_CORE_DEFAULT = {
    ("features", "--batch-size"): "the classification service's rule (requests.DEFAULT_FEATURES_BATCH)",
    ("features", "--image-size"): "the lite image model's training resolution, a property of its weights",
    ("generative", "--calibration-holdout-fraction"): "the generative service's rule (calibration_fractions)",
    ("generative", "--calibration-val-fraction"): "the generative service's rule (calibration_fractions)",
    ("servers", "--threads"): "the server's own option (0: torch's choice), no request field",
}


def test_committed_file_matches_the_cores() -> None:
    script = runpy.run_path(str(SCRIPT))
    assert script["OUT"].read_text(encoding="utf-8") == script["render"](), "run scripts/cli_defaults.py and commit"


def _literal_text(node: ast.expr) -> str:
    """The text a help expression writes itself: its string constants, each formatted value standing as {}."""
    if isinstance(node, ast.Constant):
        return node.value if isinstance(node.value, str) else ""
    if isinstance(node, ast.JoinedStr):
        return "".join(_literal_text(v) if isinstance(v, ast.Constant) else "{}" for v in node.values)
    if isinstance(node, ast.BinOp):
        return _literal_text(node.left) + _literal_text(node.right)
    return "{}"


def _help_strings() -> list[tuple[str, str, str]]:
    """(module, option, literal help text) of every ``add_argument`` call with a help in shared/zsc/cli."""
    found = []
    for path in sorted(CLI.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if not (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument"):
                continue
            names = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            option = names[0] if names else ast.unparse(node.args[0]) if node.args else "?"
            for kw in node.keywords:
                if kw.arg == "help":
                    found.append((path.stem, option, _literal_text(kw.value)))
    return found


def test_no_help_string_writes_a_default_number_itself() -> None:
    helps = _help_strings()
    assert len(helps) > 100  # the scan sees the commands' options
    literal = {(module, option): text for module, option, text in helps if LITERAL_DEFAULT.search(text)}
    restated = sorted(set(literal) - set(NOT_A_CORE_DEFAULT))
    assert restated == [], f"help restates a default: use zsc.cli.common.default_of ({[literal[k] for k in restated]})"
    stale = sorted(set(NOT_A_CORE_DEFAULT) - set(literal))
    assert stale == [], f"no longer writes a number after 'default': drop from NOT_A_CORE_DEFAULT: {stale}"


def _subcommand_help(command: str) -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command].format_help()


def test_help_shows_the_core_configs_values() -> None:
    """Spot checks against the cores themselves: what the help prints is what an unset option gets."""
    from zsc_generative.core.finetune import FineTuneConfig
    from zsc_generative.core.ship import ShipConfig
    from zsc_generative.core.tfvaegan import TFVAEGANConfig
    from zsc_recovery.core.flpt import FlptConfig

    generator = " ".join(_subcommand_help("train-generator").split())  # argparse wraps lines anywhere
    assert f"default {ShipConfig.encoder_hidden}" in generator
    assert f"tfvaegan {TFVAEGANConfig.epochs}" in generator
    finetune = " ".join(_subcommand_help("finetune").split())
    assert f"tip_adapter_f {FineTuneConfig.for_method('tip_adapter_f').epochs}" in finetune
    assert f'(default "{FlptConfig.ctx_init}")' in " ".join(_subcommand_help("align").split())


def test_default_of_formats_and_refuses_unknown_names() -> None:
    assert default_of("GZSLConfig", "lr") == f"{core_defaults()['GZSLConfig']['lr']:g}"
    assert default_of("TrickConfig", "guidance_range") == " ".join(
        f"{g:g}" for g in core_defaults()["TrickConfig"]["guidance_range"]
    )
    assert default_of("CLSWGANConfig", "noise_dim", none="text width") == "text width"
    assert default_per({"a": "GZSLConfig", "b": "GZSLConfig"}, "epochs") == default_of("GZSLConfig", "epochs")
    with pytest.raises(KeyError):
        default_of("GZSLConfig", "no_such_field")
