"""`zsc synthesize`: a synthetic ImageFolder + manifest.jsonl from class names, on one or several synthesis replicas.

Several replicas (``--address`` repeated or comma-separated, an ``ipv4:`` multi-address target, or a ``dns:///`` name
standing for all its addresses) share the plan cut into shards on the chunk grid (``zsc.client.synthesis``): a free
replica takes the next shard, a lost replica's shard goes to the others, and all write into the same directory, so
the result is byte for byte what one replica writes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from zsc.cli.common import CommandError, default_of, open_channel, parse_names, progress_bar
from zsc.client import synthesis
from zsc.client.synthesis import ClassSpec, GuidanceRange, TrickShare, TrickSpec
from zsc.runtime import client

SERVICE = synthesis.SERVICE


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synthesize", help="generate a synthetic training set from class names (bag of tricks)")
    p.add_argument(
        "--classes",
        required=True,
        help="comma-separated class names, or @FILE with one class per line: NAME or NAME: DESCRIPTION",
    )
    p.add_argument(
        "--describe",
        action="append",
        default=[],
        metavar="NAME=TEXT",
        help='prompt text for an ambiguous class name, e.g. crane="crane, a bird" (repeatable)',
    )
    p.add_argument("--per-class", type=int, required=True, help="images per class")
    p.add_argument(
        "--tricks",
        default="class_prompt",
        help="class_prompt | multidomain, optionally with random_guidance | fixed_guidance, joined by ',' "
        "(e.g. multidomain,random_guidance); 'merged'; or an explicit merge 'TRICKS=SHARE;TRICKS=SHARE' "
        "(shares default to equal). Default: class_prompt",
    )
    p.add_argument("--resolution", type=int, default=0, help="target size in pixels (default: the model's native)")
    p.add_argument("--out", required=True, type=Path, help="output directory (new, empty, or an earlier run's)")
    # The request's seed has no unset state (proto3 int64): the service runs with the seed sent, so 0 is the CLI's.
    p.add_argument("--seed", type=int, default=0)
    # 0 and "" are the request's "unset": the service applies its core configs' defaults, which the help shows.
    p.add_argument(
        "--steps", type=int, default=0, help=f"denoising steps (default {default_of('GenerationConfig', 'steps')})"
    )
    p.add_argument(
        "--scheduler",
        default="",
        metavar="ddim|dpm++|ddpm|euler",
        help=f"sampler (default {default_of('GenerationConfig', 'scheduler')})",
    )
    p.add_argument("--domains", nargs="+", default=[], help="custom domains for multidomain (default: the paper's ten)")
    p.add_argument("--domain-set", default="", help="a named domain set instead of --domains (e.g. paper)")
    p.add_argument(
        "--template", default="", help="multidomain template: multidomain, satellite, or text with {class} and {domain}"
    )
    p.add_argument(
        "--image-template",
        default="",
        help="prompt of random_guidance / fixed_guidance alone: image_of ('an image of {class}', the released code's; "
        "default), image_of_a ('an image of a {class}', the paper's), or text with {class}",
    )
    p.add_argument(
        "--guidance-range",
        nargs=2,
        type=float,
        metavar=("LO", "HI"),
        help=f"random guidance (default {default_of('TrickConfig', 'guidance_range')})",
    )
    p.add_argument(
        "--guidance", type=float, help=f"fixed guidance scale (default {default_of('TrickConfig', 'guidance_scale')})"
    )
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--native-resolution", type=int, default=0, help="generation resolution (default: the model's)")
    p.add_argument(
        "--downsample",
        default="",
        metavar="lanczos|bicubic|bilinear",
        help=f"default {default_of('GenerationConfig', 'downsample')}",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=0,
        help="images per UNet batch (default: the directory's, or "
        f"{default_of('writer', 'DEFAULT_BATCH_SIZE')} when new)",
    )
    p.add_argument("--experiment", default="", help="MLflow experiment (default: zsc-synthesis)")
    p.add_argument(
        "--address",
        action="append",
        default=[],
        help="host:port of a synthesis replica; repeat or comma-separate, or give ipv4:A,B,... or dns:///NAME:PORT "
        "(every address NAME resolves to), to shard over several (default: $ZSC_SYNTHESIS_ADDRESS; with neither, zsc "
        "starts one on an ephemeral loopback port for this command)",
    )
    p.add_argument(
        "--shard",
        type=parse_shard,
        metavar="I/N",
        help="run only shard I (0-based) of the plan cut for N workers, e.g. one pod of an indexed Kubernetes Job "
        "(--shard $JOB_COMPLETION_INDEX/N); a rerun without --shard then skips everything and rebuilds the manifest",
    )
    p.add_argument(
        "--profile",
        help="model profile of a service zsc starts itself (default: tiny); a running service of another profile "
        "refuses with FAILED_PRECONDITION (default: use the running one as it is)",
    )
    p.set_defaults(func=cmd_synthesize)


def cmd_synthesize(args: argparse.Namespace) -> int:
    out = args.out.expanduser().resolve()
    classes = parse_classes(args.classes, args.describe)
    options = {
        "tricks": parse_tricks(args),
        "resolution": args.resolution,
        "seed": args.seed,
        "generation": {
            "steps": args.steps,
            "scheduler": args.scheduler,
            "native_resolution": args.native_resolution,
            "negative_prompt": args.negative_prompt,
            "downsample": args.downsample,
        },
        "batch_size": args.batch_size,
        "experiment": args.experiment,
    }
    targets = [t for t in args.address or [client.address_from_env(SERVICE) or ""] if t.strip()]
    replicas = list(dict.fromkeys(r for t in targets for r in client.resolve_target(t)))
    if args.shard is not None:
        index, count = args.shard
        if len(replicas) > 1:
            raise CommandError("--shard runs one shard on one address; give a single --address")
        shards = synthesis.plan_shards(classes, args.per_class, out, count, args.batch_size)
        if index >= len(shards):
            # the plan has fewer chunks than workers: this worker has nothing to do, which is not an error
            print(f"shard {index}/{count}: nothing to do (the plan cuts into {len(shards)} shards)")
            return 0
        options["shard"] = shards[index]
    if len(replicas) <= 1:
        # one replica: the target as written (gRPC resolves a name itself), else the in-process server
        address = (targets[0] if len(targets) == 1 else replicas[0].address) if replicas else None
        single = argparse.Namespace(address=address, profile=args.profile)
        with open_channel(single, SERVICE, [out]) as channel, progress_bar("synthesize") as progress:
            result = synthesis.generate_dataset(channel, classes, args.per_class, out, progress=progress, **options)
        print_summary(result, out)
    else:
        start = time.perf_counter()
        with progress_bar("synthesize") as progress:
            result = synthesis.generate_dataset(
                replicas, classes, args.per_class, out, profile=args.profile, progress=progress, **options
            )
        if result.shards is not None:
            print(f"zsc: {result.shards.summary(len(replicas))}", file=sys.stderr)
        print_summary(result, out, time.perf_counter() - start)
    return 0


def parse_classes(value: str, describe: list[str]) -> list[ClassSpec]:
    """Class specs from "a,b,c" or "@file" (NAME or NAME: DESCRIPTION per line), plus --describe NAME=TEXT."""
    descriptions: dict[str, str] = {}
    if value.startswith("@"):
        path = Path(value[1:]).expanduser()
        if not path.is_file():
            raise CommandError(f"no such class file: {path}")
        names = []
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, _, description = line.partition(":")
            names.append(name.strip())
            if description.strip():
                descriptions[name.strip()] = description.strip()
    else:
        names = parse_names(value, "--classes")
    for item in describe:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise CommandError(f"--describe takes NAME=TEXT, got {item!r}")
        if name.strip() not in names:
            raise CommandError(f"--describe names {name.strip()!r}, which is not in --classes")
        descriptions[name.strip()] = text.strip()
    return [ClassSpec(n, descriptions.get(n, "")) for n in names]


def parse_tricks(args: argparse.Namespace) -> TrickSpec:
    """--tricks and its knobs; "A;B=0.3" style values become an explicit merge with shares."""
    spec = TrickSpec(
        domains=args.domains, domain_set=args.domain_set, template=args.template, image_template=args.image_template
    )
    if ";" in args.tricks:
        components = [c.strip() for c in args.tricks.split(";") if c.strip()]
        with_share = ["=" in c for c in components]
        if any(with_share) and not all(with_share):
            raise CommandError(f"give a share to every merged trick or to none: {args.tricks!r}")
        for component in components:
            tricks, _, share = component.rpartition("=") if "=" in component else (component, "", "")
            try:
                value = float(share) if share else 1.0 / len(components)
            except ValueError:
                raise CommandError(f"share {share!r} in --tricks is not a number") from None
            spec.merge.append(TrickShare(tricks.strip(), value))
    else:
        spec.tricks = args.tricks
    if args.guidance is not None:
        spec.guidance_scale = args.guidance
    if args.guidance_range is not None:
        spec.guidance_range = GuidanceRange(*args.guidance_range)
    return spec


def parse_shard(value: str) -> tuple[int, int]:
    """ "I/N" -> (I, N) with 0 <= I < N."""
    index, sep, count = value.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i, n = -1, 0
    if not sep or n < 1 or not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard takes I/N with 0 <= I < N, got {value!r}")
    return i, n


def print_summary(result: synthesis.DatasetResult, out: Path, seconds: float | None = None) -> None:
    """Counts of the run (its shards added up) and its rate: over ``seconds`` (the sharded run's wall time, shards
    overlapping), else over the one server's own time."""
    total, generated, skipped = result.total, result.generated, result.skipped
    if seconds is None:
        seconds = result.seconds
    if generated == 0 and skipped == total:
        print(f"nothing to do: all {total} images already exist in {out} (skipped {skipped}, generated 0)")
    else:
        rate = generated / seconds if seconds > 0 else 0.0
        print(f"generated {generated} images, skipped {skipped} already present, {total} in all ({rate:.2f} images/s)")
    manifest = out / "manifest.jsonl"
    if manifest.is_file():
        lines = sum(1 for line in manifest.read_text(encoding="utf-8").splitlines() if line)
        print(f"dataset: {out} (manifest: {manifest}, {lines} records)")
    else:
        print(f"dataset: {out}")
    runs = result.mlflow_run_ids
    print(f"MLflow run{'s' if len(runs) > 1 else ''}: {', '.join(runs)}")
