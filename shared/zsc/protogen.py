"""Generates the gRPC stubs from protos/ into this package (``make protos``), or checks them for drift (``--check``).

protoc names Python modules after the proto path, so ``protos/zsc/<area>/v1/<area>.proto`` becomes the module
``zsc.<area>.v1.<area>_pb2``; this package is ``zsc``, so the stubs land in ``shared/zsc/<area>/v1/``.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROTO_ROOT = PACKAGE_DIR.parents[1] / "protos"


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.glob("zsc/*/v1/*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Run grpcio-tools' protoc into ``out_dir``; return the generated files relative to ``out_dir/zsc``."""
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", f"--python_out={out_dir}", f"--pyi_out={out_dir}"]
    args += [f"--grpc_python_out={out_dir}", *files]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    root = out_dir / "zsc"
    for area_dir in {p.parent for p in root.rglob("*_pb2.py")}:
        for pkg in (area_dir, area_dir.parent):
            (pkg / "__init__.py").touch()
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def drifted() -> list[str]:
    """Generated files that differ from (or are missing in) the committed ones."""
    with tempfile.TemporaryDirectory() as tmp:
        return [
            str(rel)
            for rel in generate(Path(tmp))
            if not (PACKAGE_DIR / rel).exists() or not filecmp.cmp(Path(tmp, "zsc", rel), PACKAGE_DIR / rel, False)
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed stubs differ from protos/")
    args = parser.parse_args(argv)
    if args.check:
        stale = drifted()
        if stale:
            print("stubs drifted from protos/ (run `make protos`): " + ", ".join(stale), file=sys.stderr)
            return 1
        print("stubs match protos/")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        for rel in generate(Path(tmp)):
            target = PACKAGE_DIR / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(tmp, "zsc", rel), target)
            print(f"wrote shared/zsc/{rel}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
