"""The md5 of every output `make demo` wrote, read from its dvc.lock: a golden record that a refactor leaves them be.

    python scripts/demo_hashes.py extract dvc.lock > tests/golden/demo_outs.json
    python scripts/demo_hashes.py compare dvc.lock tests/golden/demo_outs.json

``extract`` prints {stage: {out path: md5}} as sorted JSON. ``compare`` prints the outputs whose md5 changed, the
ones the golden file has and the lock lacks (missing) and the reverse (new); exit status 1 on any difference.
Only outs count: deps hash the source files, which a refactor changes by design.

A feature set records the MLflow run and model version that made it (its lineage), so its bytes differ between
any two runs of the demo. Where the golden object is still in the DVC cache (``.dvc/cache``), ``compare`` opens both
files: equal tensors and equal metadata apart from those run identities count as unchanged ("same content").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

Outs = dict[str, dict[str, str]]


def extract(lock: Path) -> Outs:
    """{stage: {path: md5}} of every out of every stage (a directory's md5 keeps dvc's ".dir" suffix)."""
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    return {
        stage: {out["path"]: out["md5"] for out in body.get("outs", [])}
        for stage, body in sorted(stages.items())
        if body.get("outs")
    }


# Metadata that names the run which wrote a feature set (or hashes a file that does): new in every run.
RUN_IDENTITY = {"mlflow_run_id", "generator_run_id", "generator_model_uri", "input_sha256"}
CACHE = Path(".dvc/cache/files/md5")


def _feature_set(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no Mapping)
        meta = json.loads((f.metadata() or {}).get("zsc.featureset", "{}"))
    inner = {k: v for k, v in meta.get("metadata", {}).items() if k not in RUN_IDENTITY}
    return tensors, {**meta, "metadata": inner}


def same_content(path: str, golden_md5: str) -> bool:
    """True when ``path`` and the golden object in the DVC cache are the same feature set up to run identity."""
    golden = CACHE / golden_md5[:2] / golden_md5[2:]
    if not (path.endswith(".safetensors") and golden.is_file() and Path(path).is_file()):
        return False
    import torch

    (now, now_meta), (then, then_meta) = _feature_set(Path(path)), _feature_set(golden)
    return now_meta == then_meta and now.keys() == then.keys() and all(torch.equal(now[k], then[k]) for k in now)


def compare(current: Outs, golden: Outs) -> list[str]:
    """One line per difference, in stage and path order; empty when the two agree."""
    lines = []
    for stage in sorted(set(current) | set(golden)):
        now, then = current.get(stage, {}), golden.get(stage, {})
        for path in sorted(set(now) | set(then)):
            if path not in now:
                lines.append(f"missing {stage}: {path} (golden {then[path]})")
            elif path not in then:
                lines.append(f"new     {stage}: {path} ({now[path]})")
            elif now[path] != then[path] and not same_content(path, then[path]):
                lines.append(f"changed {stage}: {path} {then[path]} -> {now[path]}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("extract", help="print the outs' md5 as JSON").add_argument("lock", type=Path)
    check = commands.add_parser("compare", help="compare a dvc.lock's outs with a golden JSON")
    check.add_argument("lock", type=Path)
    check.add_argument("golden", type=Path)
    args = parser.parse_args(argv)
    if args.command == "extract":
        print(json.dumps(extract(args.lock), indent=2, sort_keys=True))
        return 0
    current = extract(args.lock)
    differences = compare(current, json.loads(args.golden.read_text()))
    for line in differences:
        print(line)
    total = sum(len(paths) for paths in current.values())
    print(f"{len(differences)} differences over {total} outputs", file=sys.stderr)
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
