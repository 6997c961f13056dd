"""`zsc registry promote|review`: metric-gated promotion with an alias history, and a side-by-side review.

Both talk to the MLflow registry directly (``MLFLOW_TRACKING_URI``, else the local store under mlflow/); no service
is involved.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from zsc import registry
from zsc.cli.common import CommandError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("registry", help="promote registered model versions and review them side by side")
    actions = p.add_subparsers(dest="registry_command", required=True, metavar="ACTION")

    q = actions.add_parser("promote", help="point an alias at a version if every --require gate passes")
    q.add_argument("name", help="registered model name")
    q.add_argument("--version", required=True, help="model version to promote")
    q.add_argument("--alias", default="champion", help="alias to move (default: champion)")
    q.add_argument(
        "--require",
        action="append",
        default=[],
        metavar="METRIC>=X",
        help="gate on a version tag or training-run metric, e.g. real_test.top1>=0.6 (repeatable; also > <= < ==)",
    )
    q.set_defaults(func=cmd_promote)

    q = actions.add_parser("review", help="the versions side by side (markdown) and an HTML report with plots")
    q.add_argument("names", nargs="+", metavar="NAME", help="registered model name(s)")
    q.add_argument("--html", type=Path, help="where to write the HTML report of one model (default: see --html-dir)")
    q.add_argument("--html-dir", type=Path, default=Path(), help="folder of the <name>-review.html reports (default .)")
    q.set_defaults(func=cmd_review)


def cmd_promote(args: argparse.Namespace) -> int:
    entry = registry.promote(args.name, args.version, args.alias, args.require)
    was = f" (was v{entry['previous']})" if entry["previous"] else ""
    gates = f"; gates passed: {', '.join(entry['gates'])}" if entry["gates"] else ""
    print(f"{args.name}@{args.alias} -> v{entry['version']}{was}{gates}")
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    if args.html and len(args.names) > 1:
        raise CommandError("--html names one report; with several models use --html-dir")
    for i, name in enumerate(args.names):
        html_path = (args.html or args.html_dir / f"{name}-review.html").resolve()
        text, written = registry.review(name, html_path)
        if len(args.names) > 1:
            print(f"\n### {name}" if i else f"### {name}")
        print(text)
        print(f"\nHTML report: {written}")
    if written is not None:
        # dvc plots show writes dvc_plots/index.html beside reports/ in a pipeline checkout
        index = registry.write_report_index(written.parent, {"DVC plots": Path("dvc_plots/index.html").resolve()})
        print(f"index of the reports: {index}")
    return 0
