"""Plumbing shared by the client commands: service channels, progress bars from WatchOperation, one-line errors."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from zsc.client.operations import ClientError, Interrupted, OperationError, Progress
from zsc.runtime import client

if TYPE_CHECKING:
    from zsc.features import FeatureSet


INTERRUPTED = 130  # the exit code of a command ended by Ctrl-C (128 + SIGINT), as shells and dvc report it


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit code 1."""


@cache
def core_defaults() -> dict[str, dict[str, Any]]:
    """The core configs' defaults: {config: {field: default}} from config_defaults.json, which
    scripts/cli_defaults.py writes from the cores (a unit test checks it); package data, so no service is imported."""
    import json
    from importlib import resources

    return json.loads(resources.files("zsc.cli").joinpath("config_defaults.json").read_text(encoding="utf-8"))


def shown(value: Any, none: str = "none") -> str:
    """A default as help text writes it: floats in %g form (1e-4 is 0.0001, 1.0 is 1), sequences space-separated."""
    if value is None:
        return none
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return " ".join(shown(v) for v in value)
    return str(value)


def default_of(config: str, field: str, none: str = "none") -> str:
    """The default the service applies to an unset option, as help text shows it: ``config.field`` of the core,
    e.g. ``default_of("ShipConfig", "encoder_hidden")`` is "2048". A help string restates no core default itself."""
    return shown(core_defaults()[config][field], none)


def default_per(configs: str | Mapping[str, str], field: str, none: str = "none") -> str:
    """``field``'s default under each label's config ("clswgan 50, tfvaegan 120"), or the one value they share
    (``configs`` may name one config)."""
    by_label = {"": configs} if isinstance(configs, str) else configs
    values = {label: default_of(config, field, none) for label, config in by_label.items()}
    if len(set(values.values())) == 1:
        return next(iter(values.values()))
    return ", ".join(f"{label} {value}" for label, value in values.items())


def add_settings(
    group: argparse._ActionsContainer,
    configs: str | Mapping[str, str],
    settings: Mapping[str, tuple[type, str]],
    suffix: str = "",
) -> None:
    """An option ``--<field>`` of each core setting {field: (type, what it is)}, unset by default (None is not sent:
    the service applies the default), its help "what it is (default <the configs' default><suffix>)"."""
    for field, (kind, text) in settings.items():
        default = f"default {default_per(configs, field)}{suffix}"
        group.add_argument(f"--{field.replace('_', '-')}", type=kind, help=f"{text} ({default})" if text else default)


def add_client_args(parser: argparse.ArgumentParser, service: str) -> None:
    parser.add_argument(
        "--address",
        help=f"host:port of a running {service} service (default: $ZSC_{service.upper()}_ADDRESS; "
        "with neither, zsc starts one on an ephemeral loopback port for this command)",
    )
    parser.add_argument(
        "--profile",
        help="model profile of a service zsc starts itself (default: tiny); a running service of another profile "
        "refuses with FAILED_PRECONDITION (default: use the running one as it is)",
    )


def open_channel(args: argparse.Namespace, service: str, paths: Sequence[str | Path] = (), balanced: bool = False):
    """A channel to the service; an ephemeral server gets the directories this command names as its data roots.
    ``balanced``: round_robin over a multi-replica target, for commands that make only unary calls (no Operation
    whose follow-ups must reach the replica that started it)."""
    roots = [Path.cwd()]
    for p in paths:
        if p:
            path = Path(p).expanduser().resolve()
            roots.append(path if path.is_dir() else path.parent)
    return client.service_channel(service, args.address, profile=args.profile, data_roots=roots, balanced=balanced)


@contextmanager
def progress_bar(description: str) -> Iterator[Progress]:
    """A tqdm bar on stderr for a client call's ``progress`` callback (done, total, message), closed on leaving."""
    from tqdm import tqdm

    bar = tqdm(desc=description, disable=None, dynamic_ncols=True, file=sys.stderr)

    def update(done: int, total: int, message: str) -> None:
        if total and bar.total != total:
            bar.total = total
        bar.n = done
        if message:
            bar.set_postfix_str(message, refresh=False)
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()


def exit_interrupted() -> int:
    """The exit code of Ctrl-C: 130. A job of an in-process server that is still computing (it ignored its cancel,
    or a second Ctrl-C left it) would abort the interpreter's teardown ('terminate called without an active
    exception', SIGABRT), so then the process ends at once, with what it printed flushed."""
    operations = sys.modules.get("zsc.runtime.operations")
    if operations is not None and operations.running_jobs():
        import logging

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(INTERRUPTED)
    return INTERRUPTED


def run_command(fn: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Turn every expected failure into one line on stderr and exit code 1; Ctrl-C into exit code 130."""
    from zsc.errors import ZscError

    try:
        return fn(args)
    except Interrupted as err:
        print(f"zsc: {err}", file=sys.stderr)
        return exit_interrupted()
    except KeyboardInterrupt:  # Ctrl-C outside an operation (start-up, model loading, a unary call)
        print("zsc: interrupted", file=sys.stderr)
        return exit_interrupted()
    except grpc.RpcError as err:
        print(f"zsc: {err.code().name}: {err.details()}", file=sys.stderr)
    except OperationError as err:
        print(f"zsc: {err}", file=sys.stderr)
    except (CommandError, ClientError, ZscError, TimeoutError, FileNotFoundError, ValueError) as err:
        print(f"zsc: {err}", file=sys.stderr)
    except BrokenPipeError:  # `zsc ... | head` closed the pipe: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes at exit
        return 0
    return 1


def _entries(value: str, option: str) -> list[str]:
    """The entries of a comma-separated list, or of @FILE (one a line, blank lines skipped), exactly as written."""
    if value.startswith("@"):
        path = Path(value[1:])
        if not path.is_file():
            raise CommandError(f"no such {option} file: {path}")
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return value.split(",")


def parse_names(value: str, option: str) -> list[str]:
    """Comma-separated class names, or @FILE with one name per line (blank lines skipped), checked by the rule every
    service applies (``zsc.data.check_class_names``): an empty entry (``cat,,dog``), a name with surrounding
    whitespace (``cat, dog``) or a repeated name is refused, never dropped or stripped."""
    from zsc.data import check_class_names

    return list(check_class_names(_entries(value, option), option))


def add_class_map_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--class-map",
        default="",
        metavar="FOLDER=NAME,...",
        help="read these folders as these classes (e.g. n01440764=tench); every other folder must be named exactly "
        "as its class, or the command fails naming the missing class or extra folder",
    )


def class_map(args: argparse.Namespace) -> dict[str, str]:
    return parse_class_map(args.class_map) if args.class_map else {}


def parse_class_map(value: str, option: str = "--class-map") -> dict[str, str]:
    """FOLDER=NAME,... (or @FILE, one FOLDER=NAME a line): the explicit folder -> class map of a dataset whose
    folders are not named as their classes; names follow the ``parse_names`` rule."""
    from zsc.data import check_class_names

    mapping: dict[str, str] = {}
    for entry in _entries(value, option):
        folder, sep, name = entry.partition("=")
        if not sep or not folder:
            raise CommandError(f"{option} takes FOLDER=NAME entries, got {entry!r}")
        if folder in mapping:
            raise CommandError(f"{option} maps folder {folder!r} twice")
        mapping[folder] = name
    if mapping:  # an empty @FILE maps nothing (a CoOp half whose folders all bear their class names)
        check_class_names(list(mapping.values()), option)
    return mapping


def markdown_table(header: list[str], rows: Sequence[Sequence[object]]) -> str:
    def fmt(v: object) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def is_timing(metric: str) -> bool:
    """Durations and throughputs (seconds, images per second) differ from run to run on the same inputs: they stay in
    MLflow and the printout, out of the DVC metrics and plots, so a rerun of a stage reproduces its outputs byte for
    byte."""
    return "second" in metric


def write_json(path: Path, payload: object) -> None:
    import json

    from zsc.io import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


def write_csv(path: Path, header: list[str], rows: Sequence[Sequence[object]]) -> None:
    import csv
    import io

    from zsc.io import atomic_write_bytes

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def write_per_class_accuracy(
    plots_dir: Path, class_names: list[str], per_class: list[float], unseen: set[int] | None = None
) -> None:
    """``per_class_accuracy.csv`` (class, accuracy) for DVC's bar template; classes without a finite accuracy (no test
    sample) are left out. With ``unseen`` (GZSL) a ``split`` column says seen or unseen, which the plot colours."""
    import math

    header = ["class", "accuracy"] + (["split"] if unseen is not None else [])
    rows = [
        [n, f"{a:.6f}"] + ([] if unseen is None else ["unseen" if i in unseen else "seen"])
        for i, (n, a) in enumerate(zip(class_names, per_class, strict=True))
        if math.isfinite(a)
    ]
    write_csv(plots_dir / "per_class_accuracy.csv", header, rows)


def save_evaluation(
    class_names: list[str],
    per_class: list[float],
    confusion: list[list[int]],
    metrics: dict[str, float],
    metrics_out: Path | None,
    plots_dir: Path | None,
) -> None:
    """Write DVC-friendly outputs: a metrics JSON, per-class accuracy CSV and a per-sample (actual, predicted) CSV for
    DVC's confusion template. Files are written atomically, so an interrupted stage leaves no partial output."""
    if metrics_out is not None:
        scores = {k: v for k, v in metrics.items() if not is_timing(k)}
        # JSON has no NaN: a class without test images has no accuracy
        accuracy = {n: (a if math.isfinite(a) else None) for n, a in zip(class_names, per_class, strict=True)}
        write_json(metrics_out, {**scores, "per_class_accuracy": accuracy})
    if plots_dir is not None:
        write_per_class_accuracy(plots_dir, class_names, per_class)
        pairs = [
            [class_names[i], class_names[j]]
            for i, row in enumerate(confusion)
            for j, count in enumerate(row)
            for _ in range(int(count))
        ]
        write_csv(plots_dir / "confusion.csv", ["actual", "predicted"], pairs)


def load_features_of(path: Path, names: list[str]) -> tuple[FeatureSet, dict[str, int]]:
    """A zsc features file and the index of each of ``names`` in its classes; a one-line error for a missing one."""
    from zsc.features import FeatureSet

    if not path.is_file():
        raise CommandError(f"no such features file: {path}")
    data = FeatureSet.load(path)
    index = {n: i for i, n in enumerate(data.class_names)}
    missing = [n for n in names if n not in index]
    if missing:
        raise CommandError(f"class {missing[0]!r} is not in {path} (it has {', '.join(data.class_names)})")
    return data, index


# --- outputs of training commands in pipelines ---------------------------------------------------------------------
def add_training_outputs(parser: argparse.ArgumentParser) -> None:
    """Options that let a DVC stage track what a training command registered in MLflow."""
    g = parser.add_argument_group("outputs for pipelines (DVC)")
    g.add_argument(
        "--alias",
        help="point this alias of the registered model at the new version (recorded in its alias history), so a later "
        "step can name it models:/NAME@ALIAS",
    )
    g.add_argument(
        "--model-out", type=Path, help="copy the new version's weights and config (safetensors, JSON) into this folder"
    )
    g.add_argument("--metrics-out", type=Path, help="write the training run's final metrics as JSON")
    g.add_argument("--plots-dir", type=Path, help="write the per-epoch metrics as training_curve.csv (step, metrics)")


def save_training_outputs(args: argparse.Namespace, name: str, version: str, run_id: str) -> None:
    """Act on the ``add_training_outputs`` options for version ``version`` of ``name``, trained in run ``run_id``
    (``zsc.client.registry``: the MLflow store this client shares with the service)."""
    if not (args.alias or args.model_out or args.metrics_out or args.plots_dir):
        return
    from zsc.client import registry

    if args.alias:
        registry.promote(name, version, args.alias)
        print(f"{name}@{args.alias} -> v{version}")
    if args.model_out:
        files = registry.export_model_files(name, version, args.model_out)
        print(f"model files: {', '.join(str(f) for f in files)}")
    if args.metrics_out or args.plots_dir:
        metrics = {k: v for k, v in registry.run_metrics(run_id).items() if not is_timing(k)}
        if args.metrics_out:
            write_json(args.metrics_out, metrics)
        if args.plots_dir:
            curves = registry.metric_curves(run_id, list(metrics))
            steps = sorted({step for curve in curves.values() for step in curve})
            names = sorted(curves)
            rows = [[step, *(curves[k].get(step, "") for k in names)] for step in steps]
            write_csv(args.plots_dir / "training_curve.csv", ["step", *names], rows)


def model_uri(text: str) -> str:
    """``--model``/``--generator``/``--classifier`` as given: a URI, or a ``--model-out`` folder resolved to the
    registered version holding its files (said on stderr)."""
    from zsc.client import registry

    uri = registry.model_uri(text)
    if uri != text:
        print(f"{text}: {uri}", file=sys.stderr)
    return uri
