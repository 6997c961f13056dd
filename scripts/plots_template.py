"""Write the page template that `dvc plots show` fills, with vega, vega-lite and vega-embed inlined.

DVC's default page loads those three scripts from a CDN, so the page is blank offline. This script takes the same
versions DVC's renderer asks for from the npm registry (`npm pack`, the npm cache serves repeats) and writes one
self-contained template; `.dvc/config` points `plots.html_template` at it. `make install` runs it.

Usage: python scripts/plots_template.py [--out .dvc/page-template.html]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

# The versions dvc_render's VegaRenderer loads from its CDN, so the specs it writes render the same way.
PACKAGES = {"vega": "5.20.2", "vega-lite": "5.2.0", "vega-embed": "6.18.2"}
DEFAULT_OUT = Path(__file__).resolve().parent.parent / ".dvc" / "page-template.html"

PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
{refresh_tag}
<title>zsc: DVC plots</title>
<!-- vega {vega}, vega-lite {vega_lite}, vega-embed {vega_embed}, inlined from the npm registry's packages -->
{inline_scripts}
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-spacing: 15px; }}
</style>
</head>
<body>
<h1>zsc pipelines: plots</h1>
<p>Accuracy plots of the <code>tiny</code> profile are chance level by design: its models have random weights.</p>
{plot_divs}
</body>
</html>
"""


def fetch_script(package: str, version: str, workdir: Path) -> str:
    """The minified browser build of ``package@version``, from the npm registry."""
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("plots_template: npm is needed to fetch the vega scripts (apt-get install npm)")
    out = subprocess.run(
        [npm, "pack", "--silent", f"{package}@{version}"], cwd=workdir, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise SystemExit(f"plots_template: npm pack {package}@{version} failed: {out.stderr.strip().splitlines()[-1:]}")
    tarball = workdir / out.stdout.strip().splitlines()[-1]
    with tarfile.open(tarball) as tar:
        member = tar.extractfile(f"package/build/{package}.min.js")
        if member is None:
            raise SystemExit(f"plots_template: {tarball.name} has no build/{package}.min.js")
        return member.read().decode("utf-8")


def page(scripts: dict[str, str]) -> str:
    # "</script" inside a script would end the inline element early; "<\/script" means the same to JavaScript.
    escaped = (source.replace("</script", "<\\/script") for source in scripts.values())
    inline = "\n".join(f"<script>\n{source}\n</script>" for source in escaped)
    # The {refresh_tag} and {plot_divs} placeholders stay for DVC to fill; there is no {scripts} placeholder, so
    # DVC adds no CDN script tags.
    return PAGE.format(
        refresh_tag="{refresh_tag}",
        plot_divs="{plot_divs}",
        inline_scripts=inline,
        vega=PACKAGES["vega"],
        vega_lite=PACKAGES["vega-lite"],
        vega_embed=PACKAGES["vega-embed"],
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="zsc-vega-") as tmp:
        scripts = {name: fetch_script(name, version, Path(tmp)) for name, version in PACKAGES.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_suffix(".partial")
    partial.write_text(page(scripts), encoding="utf-8")
    partial.replace(args.out)
    print(f"plots page template: {args.out} ({args.out.stat().st_size // 1024} KiB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
