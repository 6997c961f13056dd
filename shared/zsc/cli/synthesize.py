"""`zsc synthesize`: a synthetic ImageFolder + manifest.jsonl from class names, on one or several synthesis replicas.

Several replicas (``--address`` repeated or comma-separated, an ``ipv4:`` multi-address target, or a ``dns:///`` name
standing for all its addresses) share the plan cut into ``fanout.SHARDS_PER_REPLICA`` shards per replica on the
chunk grid by ``writer.split_shards``: a free replica takes the next shard, a lost replica's shard goes to the others
(``zsc.cli.fanout``), and all write into the same directory, so the result is byte for byte what one replica writes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from zsc.cli import fanout
from zsc.cli.common import CommandError, follow, open_channel, parse_names
from zsc.runtime import client
from zsc.synthesis.v1 import synthesis_pb2 as pb
from zsc.synthesis.v1 import synthesis_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from zsc_synthesis.core.writer import Shard

SERVICE = "synthesis"


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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=0, help="denoising steps (default 40)")
    p.add_argument("--scheduler", default="", metavar="ddim|dpm++|ddpm|euler", help="sampler (default ddim)")
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
    p.add_argument("--guidance-range", nargs=2, type=float, metavar=("LO", "HI"), help="random guidance (default 1 5)")
    p.add_argument("--guidance", type=float, help="fixed guidance scale (default 7.5)")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--native-resolution", type=int, default=0, help="generation resolution (default: the model's)")
    p.add_argument("--downsample", default="", metavar="lanczos|bicubic|bilinear", help="default lanczos")
    p.add_argument(
        "--batch-size", type=int, default=0, help="images per UNet batch (default: the directory's, or 8 when new)"
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
    request = pb.GenerateDatasetRequest(
        classes=parse_classes(args.classes, args.describe),
        images_per_class=args.per_class,
        tricks=parse_tricks(args),
        resolution=args.resolution,
        output_uri=str(out),
        seed=args.seed,
        generation=pb.GenerationSettings(
            steps=args.steps,
            scheduler=args.scheduler,
            native_resolution=args.native_resolution,
            negative_prompt=args.negative_prompt,
            downsample=args.downsample,
        ),
        batch_size=args.batch_size,
        experiment=args.experiment,
    )
    targets = [t for t in args.address or [client.address_from_env(SERVICE) or ""] if t.strip()]
    replicas = list(dict.fromkeys(r for t in targets for r in client.resolve_target(t)))
    if args.shard is not None:
        index, count = args.shard
        if len(replicas) > 1:
            raise CommandError("--shard runs one shard on one address; give a single --address")
        shards = plan_shards(request, count)
        if index >= len(shards):
            # the plan has fewer chunks than workers: this worker has nothing to do, which is not an error
            print(f"shard {index}/{count}: nothing to do (the plan cuts into {len(shards)} shards)")
            return 0
        request.shard.CopyFrom(_shard_message(shards[index]))
    if len(replicas) <= 1:
        # one replica: the target as written (gRPC resolves a name itself), else the in-process server
        address = (targets[0] if len(targets) == 1 else replicas[0].address) if replicas else None
        single = argparse.Namespace(address=address, profile=args.profile)
        with open_channel(single, SERVICE, [out]) as channel:
            op = follow(channel, pb_grpc.SynthesisStub(channel).GenerateDataset(request), "synthesize")
        results = [client.unpack(op, pb.GenerateDatasetResult)]
        print_summary(results, out)
    else:
        start = time.perf_counter()
        results = run_sharded(request, replicas, args.profile)
        print_summary(results, out, time.perf_counter() - start)
    return 0


def parse_classes(value: str, describe: list[str]) -> list[pb.ClassSpec]:
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
    return [pb.ClassSpec(name=n, description=descriptions.get(n, "")) for n in names]


def parse_tricks(args: argparse.Namespace) -> pb.TrickSpec:
    """--tricks and its knobs; "A;B=0.3" style values become an explicit merge with shares."""
    spec = pb.TrickSpec(
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
            spec.merge.append(pb.TrickShare(tricks=tricks.strip(), share=value))
    else:
        spec.tricks = args.tricks
    if args.guidance is not None:
        spec.guidance_scale = args.guidance
    if args.guidance_range is not None:
        spec.guidance_range.lo, spec.guidance_range.hi = args.guidance_range
    return spec


def run_sharded(
    request: pb.GenerateDatasetRequest,
    replicas: list[client.Replica],
    profile: str | None,
    on_start: fanout.OnStart | None = None,
) -> list[pb.GenerateDatasetResult]:
    """The plan cut into ``SHARDS_PER_REPLICA`` shards per replica, spread over the replicas by ``fanout``; then one
    manifest rewrite."""
    # the core decides the chunk grid and rebuilds the manifest, so replicas and one server agree to the byte
    from zsc_synthesis.core import writer

    out = Path(request.output_uri)
    parts = []
    for shard in plan_shards(request, fanout.SHARDS_PER_REPLICA * len(replicas)):
        part = pb.GenerateDatasetRequest()
        part.CopyFrom(request)
        part.shard.CopyFrom(_shard_message(shard))
        parts.append(part)
    run = fanout.run_shards(
        SERVICE,
        replicas,
        parts,
        lambda channel, part: pb_grpc.SynthesisStub(channel).GenerateDataset(part),
        profile=profile,
        description="synthesis shard",
        on_start=on_start,
    )
    print(f"zsc: {run.summary(len(replicas))}", file=sys.stderr)
    if (out / writer.REQUEST).is_file():
        writer.write_manifest(out)  # each replica's last rewrite may predate another replica's last image
    else:
        print(f"note: {out} is not visible here; its manifest lists what the last replica to finish saw")
    return [client.unpack(op, pb.GenerateDatasetResult) for op in run.operations]


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


def plan_shards(request: pb.GenerateDatasetRequest, workers: int) -> list[Shard]:
    """The request's plan cut for ``workers`` on its chunk grid (``writer.split_shards``): what each worker runs."""
    from zsc_synthesis.core import writer

    grid = request.batch_size or _stored_batch_size(Path(request.output_uri)) or writer.DEFAULT_BATCH_SIZE
    # the split depends only on the class names and the count, so the tricks need not be parsed here
    plan_shape = writer.SynthesisRequest.create([c.name for c in request.classes], request.images_per_class)
    return writer.split_shards(plan_shape, workers, grid)


def _shard_message(shard: Shard) -> pb.Shard:
    return pb.Shard(classes=shard.classes or [], start=shard.start, stop=shard.stop or 0)


def _stored_batch_size(out: Path) -> int:
    """The batch grid an existing output directory was started with (0 when new or not visible here)."""
    from zsc.errors import FailedPrecondition
    from zsc_synthesis.core import writer

    try:
        return int(writer.read_header(out)["batch_size"])
    except (FailedPrecondition, OSError, ValueError, KeyError, TypeError):
        return 0  # new, unreadable or not ours: the service says what is wrong, if anything


def print_summary(results: list[pb.GenerateDatasetResult], out: Path, seconds: float | None = None) -> None:
    """Counts of the run (its shards added up) and its rate: over ``seconds`` (the sharded run's wall time, shards
    overlapping), else over the one server's own time."""
    total = sum(r.total for r in results)
    generated = sum(r.generated for r in results)
    skipped = sum(r.skipped for r in results)
    if seconds is None:
        seconds = max((r.seconds for r in results), default=0.0)
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
    runs = ", ".join(r.mlflow_run_id for r in results)
    print(f"MLflow run{'s' if len(results) > 1 else ''}: {runs}")
