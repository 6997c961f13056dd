"""Prompt planner for diverse synthesis (methods.md §1, the "bag of tricks"): a pure function from classes, counts,
tricks and a seed to the complete, deterministic list of generation jobs.

Trick semantics. A *trick config* is two independent choices:

- the prompt source, i.e. a template over ``{class}`` and optionally ``{domain}``:
  ``class_prompt`` = ``"{class}"``; ``multidomain`` = ``"a {domain} of a {class}"`` over a domain list in exact equal
  shares; neither = ``"an image of {class}"``, the prompt the released code pairs with random guidance (the paper
  writes "an image of a {class}": the named image template ``image_of_a``);
- the guidance: ``fixed`` (one scale, default 7.5) or ``uniform`` (a real number drawn per image from [lo, hi],
  default [1, 5]).

A trick string names one config by combining at most one prompt trick (``class_prompt`` | ``multidomain``) with at
most one guidance trick (``random_guidance`` | ``fixed_guidance``), joined by ``,`` or ``+``:
``"multidomain,random_guidance"`` is the multi-domain prompts with per-image random guidance. ``merged`` is a list of
(trick config, share) pairs; every class is split over the configs by those shares, exactly (largest remainder).

Determinism. Everything an image needs (prompt, domain, guidance, seed) is a function of the request and the image's
(class, index); the seed and the random guidance depend on (base seed, class name, index) only, through sha256, so a
single image can be regenerated alone whatever the counts or the other classes.
"""

from __future__ import annotations

import hashlib
import json
import math
import string
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypedDict

from zsc.data import check_class_names
from zsc.errors import InvalidArgument

DEFAULT_DOMAINS: tuple[str, ...] = (
    "photo",
    "drawing",
    "painting",
    "sketch",
    "collage",
    "poster",
    "digital art image",
    "rock drawing",
    "stick figure",
    "3D rendering",
)
DOMAIN_SETS: dict[str, tuple[str, ...]] = {"paper": DEFAULT_DOMAINS}
TEMPLATES: dict[str, str] = {
    "multidomain": "a {domain} of a {class}",
    "satellite": "a satellite photo of a {class} in the style of a {domain}",
}
CLASS_TEMPLATE = "{class}"
# The prompt of configs without a prompt trick: the released create_dataset.py writes "an image of {c}" (no article)
IMAGE_TEMPLATES: dict[str, str] = {"image_of": "an image of {class}", "image_of_a": "an image of a {class}"}
IMAGE_OF_TEMPLATE = IMAGE_TEMPLATES["image_of"]
DEFAULT_GUIDANCE = 7.5
DEFAULT_GUIDANCE_RANGE: tuple[float, float] = (1.0, 5.0)
MAX_IMAGES_PER_CLASS = 100_000
SHARE_TOLERANCE = 1e-6

PROMPT_TRICKS = ("class_prompt", "multidomain")
GUIDANCE_TRICKS = ("random_guidance", "fixed_guidance")
TRICKS = (*PROMPT_TRICKS, *GUIDANCE_TRICKS, "merged")
DEFAULT_MERGED = ("class_prompt", "multidomain", "random_guidance")
# folder names the writer keeps for itself at the dataset root
RESERVED_NAMES = frozenset({"manifest.jsonl", "request.json"})

GuidanceMode = Literal["fixed", "uniform"]


@dataclass(frozen=True)
class ClassSpec:
    """A class: ``name`` is the folder and label; ``description`` (e.g. "crane, a bird") replaces it in prompts."""

    name: str
    description: str = ""

    @property
    def prompt_text(self) -> str:
        return self.description or self.name


@dataclass(frozen=True)
class TrickConfig:
    """One way to generate images: a prompt template and a guidance rule. Validated on construction."""

    name: str
    template: str
    domains: tuple[str, ...] = ()
    guidance_mode: GuidanceMode = "fixed"
    guidance_scale: float = DEFAULT_GUIDANCE
    guidance_range: tuple[float, float] = DEFAULT_GUIDANCE_RANGE
    negative_prompt: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "domains", tuple(self.domains))
        object.__setattr__(self, "guidance_range", tuple(float(g) for g in self.guidance_range))
        if not self.name.strip():
            raise InvalidArgument("a trick config needs a name")
        fields = _template_fields(self.template)
        if "domain" in fields:
            _check_domains(self.domains)
        elif self.domains:
            raise InvalidArgument(
                f"trick {self.name!r} has domains but its template {self.template!r} has no {{domain}}"
            )
        if self.guidance_mode not in ("fixed", "uniform"):
            raise InvalidArgument(f"unknown guidance mode {self.guidance_mode!r}; supported: fixed, uniform")
        _check_guidance(self.guidance_scale, self.guidance_range)

    @property
    def uses_domains(self) -> bool:
        return "domain" in _template_fields(self.template)


TrickMix = tuple[tuple[TrickConfig, float], ...]
TrickSpec = str | TrickConfig | Sequence[tuple["str | TrickConfig", float]]


@dataclass(frozen=True)
class Job:
    """One image to generate. ``file`` is its path relative to the dataset root."""

    class_name: str
    index: int
    prompt: str
    negative_prompt: str
    guidance: float
    seed: int
    domain: str
    trick: str

    @property
    def file(self) -> str:
        return f"{self.class_name}/{self.index:05d}.png"


@dataclass(frozen=True)
class TrickInfo:
    """What ``list_tricks`` says about one trick (the ListTricks RPC)."""

    name: str
    kind: Literal["prompt", "guidance", "mix"]
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)


def list_tricks() -> tuple[TrickInfo, ...]:
    """The supported tricks with their defaults."""
    return (
        TrickInfo(
            "class_prompt",
            "prompt",
            "The prompt is the class name (or its description); fixed guidance unless combined with random_guidance.",
            {"template": CLASS_TEMPLATE, "guidance_scale": DEFAULT_GUIDANCE},
        ),
        TrickInfo(
            "multidomain",
            "prompt",
            "The prompt is a template over the class and a domain; the domains take exact equal shares per class.",
            {
                "template": TEMPLATES["multidomain"],
                "templates": dict(TEMPLATES),
                "domains": list(DEFAULT_DOMAINS),
                "guidance_scale": DEFAULT_GUIDANCE,
            },
        ),
        TrickInfo(
            "random_guidance",
            "guidance",
            "Guidance drawn uniformly per image from [lo, hi]; alone, the prompt is the image template, by default "
            "'an image of {class}' as the released code writes it.",
            {
                "template": IMAGE_OF_TEMPLATE,
                "image_templates": dict(IMAGE_TEMPLATES),
                "guidance_range": list(DEFAULT_GUIDANCE_RANGE),
            },
        ),
        TrickInfo(
            "fixed_guidance",
            "guidance",
            "One guidance scale for every image; alone, the prompt is the image template (default "
            "'an image of {class}').",
            {
                "template": IMAGE_OF_TEMPLATE,
                "image_templates": dict(IMAGE_TEMPLATES),
                "guidance_scale": DEFAULT_GUIDANCE,
            },
        ),
        TrickInfo(
            "merged",
            "mix",
            "Several trick configs in given shares per class (largest-remainder rounding); default equal shares.",
            {"components": list(DEFAULT_MERGED), "shares": [1 / len(DEFAULT_MERGED)] * len(DEFAULT_MERGED)},
        ),
    )


class TrickKnobs(TypedDict, total=False):
    """:func:`parse_tricks`'s knobs, for the callers that pass them on."""

    domains: Sequence[str] | str | None
    template: str | None
    guidance_scale: float | None
    guidance_range: tuple[float, float] | None
    negative_prompt: str
    image_template: str | None


def parse_tricks(
    spec: TrickSpec,
    *,
    domains: Sequence[str] | str | None = None,
    template: str | None = None,
    guidance_scale: float | None = None,
    guidance_range: tuple[float, float] | None = None,
    negative_prompt: str = "",
    image_template: str | None = None,
) -> TrickMix:
    """Resolve a trick spec into (config, share) pairs.

    ``spec`` is a trick string (``"multidomain,random_guidance"``, ``"merged"``), a ``TrickConfig``, or a sequence of
    (trick string or config, share) for an explicit merge. ``domains`` (a list or a set name such as ``"paper"``) and
    ``template`` (a literal with ``{class}`` and ``{domain}``, or a name in ``TEMPLATES``) apply to multi-domain
    components, ``image_template`` (a literal with ``{class}``, or a name in ``IMAGE_TEMPLATES``; default
    ``image_of``) to components without a prompt trick, ``guidance_scale`` to fixed-guidance ones and
    ``guidance_range`` to random-guidance ones; a knob that no component uses is an error rather than silently
    ignored.
    """
    knobs = {
        "domains": domains,
        "template": template,
        "image_template": image_template,
        "guidance_scale": guidance_scale,
        "guidance_range": guidance_range,
    }
    if isinstance(spec, str):
        names = DEFAULT_MERGED if spec.strip() == "merged" else (spec,)
        items: list[tuple[str | TrickConfig, float]] = [(n, 1.0 / len(names)) for n in names]
    elif isinstance(spec, TrickConfig):
        items = [(spec, 1.0)]
    else:
        items = list(spec)
    if not items:
        raise InvalidArgument("no tricks given")
    mix = tuple(
        (_build_config(s, knobs, negative_prompt) if isinstance(s, str) else s, _share(share)) for s, share in items
    )
    # knobs reach only the components built here from names; a given TrickConfig is taken as it is
    used = dict.fromkeys(knobs, False)
    for (config, _), (source, _) in zip(mix, items, strict=True):
        if not isinstance(source, str):
            continue
        used["domains"] |= config.uses_domains
        used["template"] |= config.uses_domains
        used["image_template"] |= not any(t in PROMPT_TRICKS for t in config.name.split("+"))
        used["guidance_scale"] |= config.guidance_mode == "fixed"
        used["guidance_range"] |= config.guidance_mode == "uniform"
    for knob, value in knobs.items():
        if value is not None and not used[knob]:
            raise InvalidArgument(f"{knob} was given but no trick in {_describe(spec)} uses it")
    return validate_mix(mix)


def validate_mix(mix: TrickMix) -> TrickMix:
    """Check a resolved mix: at least one config, unique names, non-negative shares that sum to 1."""
    if not mix:
        raise InvalidArgument("no tricks given")
    names = [config.name for config, _ in mix]
    if len(set(names)) != len(names):
        raise InvalidArgument(f"merged tricks must have distinct names, got {names}")
    for config, share in mix:
        if not isinstance(config, TrickConfig):
            raise InvalidArgument(f"expected a TrickConfig, got {type(config).__name__}")
        if not (math.isfinite(share) and share >= 0):
            raise InvalidArgument(f"share of trick {config.name!r} must be a non-negative number, got {share}")
    total = math.fsum(share for _, share in mix)
    if abs(total - 1.0) > SHARE_TOLERANCE:
        raise InvalidArgument(f"trick shares must sum to 1, got {total:.6g}")
    return tuple(mix)


def make_plan(
    classes: Sequence[str | ClassSpec],
    images_per_class: int,
    tricks: TrickSpec | TrickMix = "class_prompt",
    seed: int = 0,
    *,
    max_images_per_class: int = MAX_IMAGES_PER_CLASS,
) -> list[Job]:
    """All generation jobs, class-major then by index. Same inputs, same list."""
    specs = normalize_classes(classes)
    if isinstance(images_per_class, bool) or not isinstance(images_per_class, int):
        raise InvalidArgument(f"images per class must be an integer, got {images_per_class!r}")
    if images_per_class <= 0:
        raise InvalidArgument(f"images per class must be positive, got {images_per_class}")
    if images_per_class > max_images_per_class:
        raise InvalidArgument(f"images per class {images_per_class} is over the cap of {max_images_per_class}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidArgument(f"seed must be an integer, got {seed!r}")
    mix = resolve_mix(tricks)

    # the same split for every class: which config each index uses, and the position among that config's images
    counts = largest_remainder([share for _, share in mix], images_per_class)
    slots: list[tuple[int, int]] = []
    seen = [0] * len(mix)
    for c in interleave(counts):
        slots.append((c, seen[c]))
        seen[c] += 1
    domain_orders = [
        [config.domains[d] for d in interleave(largest_remainder([1.0] * len(config.domains), counts[i]))]
        if config.uses_domains
        else []
        for i, (config, _) in enumerate(mix)
    ]

    jobs: list[Job] = []
    for spec in specs:
        for index, (c, k) in enumerate(slots):
            config = mix[c][0]
            domain = domain_orders[c][k] if config.uses_domains else ""
            jobs.append(
                Job(
                    class_name=spec.name,
                    index=index,
                    prompt=config.template.format_map({"class": spec.prompt_text, "domain": domain}),
                    negative_prompt=config.negative_prompt,
                    guidance=_guidance(config, seed, spec.name, index),
                    seed=image_seed(seed, spec.name, index),
                    domain=domain,
                    trick=config.name,
                )
            )
    return jobs


def normalize_classes(classes: Sequence[str | ClassSpec]) -> tuple[ClassSpec, ...]:
    """Class specs from names or specs, validated: non-empty, unique, usable as folder names."""
    if isinstance(classes, str) or not classes:
        raise InvalidArgument("no classes given" if not classes else "classes must be a list, not one string")
    specs = tuple(c if isinstance(c, ClassSpec) else ClassSpec(c) for c in classes)
    for name in check_class_names([spec.name for spec in specs], "classes"):  # the rules every class list follows
        if "/" in name or "\\" in name or name in (".", ".."):
            raise InvalidArgument(f"class name {name!r} cannot be a folder name")
        if name in RESERVED_NAMES:
            raise InvalidArgument(f"class name {name!r} is reserved for the dataset's own files")
    return specs


def image_seed(base_seed: int, class_name: str, index: int) -> int:
    """A 63-bit seed for one image, from (base seed, class name, index) only."""
    return _hash_u64("seed", base_seed, class_name, index) >> 1


def largest_remainder(shares: Sequence[float], total: int) -> list[int]:
    """Integer counts proportional to ``shares`` that sum to ``total``; ties go to the earlier share."""
    weight = math.fsum(shares)
    if total == 0 or weight == 0:
        return [0] * len(shares)
    quotas = [share * total / weight for share in shares]
    counts = [math.floor(q) for q in quotas]
    # round the remainders so float noise (0.1 * 1000 = 100.00000000000001) cannot reorder exact ties
    order = sorted(range(len(shares)), key=lambda i: (-round(quotas[i] - counts[i], 9), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def interleave(counts: Sequence[int]) -> list[int]:
    """A sequence with ``counts[i]`` copies of i, spread evenly (smooth weighted round-robin, deterministic).

    Equal counts give a plain cycle 0, 1, ..., n-1, 0, 1, ...; any prefix of the sequence is close to the target
    shares, so the first images of a class and any index range of a shard are already diverse.
    """
    total = sum(counts)
    assigned = [0] * len(counts)
    order: list[int] = []
    for step in range(1, total + 1):
        # deficit = where item i should be by now minus where it is, in units of 1/total to stay in integers
        best = max(
            (i for i in range(len(counts)) if assigned[i] < counts[i]),
            key=lambda i: (counts[i] * step - assigned[i] * total, -i),
        )
        assigned[best] += 1
        order.append(best)
    return order


def resolve_mix(tricks: TrickSpec | TrickMix) -> TrickMix:
    """A mix from any trick spec: names and explicit merges go through ``parse_tricks`` with default knobs."""
    if isinstance(tricks, (str, TrickConfig)):
        return parse_tricks(tricks)
    items = list(tricks)
    configs = [(c, s) for c, s in items if isinstance(c, TrickConfig)]
    if items and len(configs) == len(items):
        return validate_mix(tuple((c, _share(s)) for c, s in configs))
    return parse_tricks(items)


def _build_config(spec: str, knobs: dict[str, Any], negative_prompt: str) -> TrickConfig:
    tokens = [t.strip() for t in spec.replace("+", ",").split(",")]
    if any(not t for t in tokens):
        raise InvalidArgument(f"malformed trick {spec!r}")
    for token in tokens:
        if token == "merged":
            raise InvalidArgument(f"'merged' cannot be combined with other tricks in {spec!r}; give a list of shares")
        if token not in TRICKS:
            raise InvalidArgument(f"unknown trick {token!r}; supported: {', '.join(TRICKS)}")
    if len(set(tokens)) != len(tokens):
        raise InvalidArgument(f"trick repeated in {spec!r}")
    prompt = [t for t in tokens if t in PROMPT_TRICKS]
    guidance = [t for t in tokens if t in GUIDANCE_TRICKS]
    if len(prompt) > 1 or len(guidance) > 1:
        raise InvalidArgument(
            f"{spec!r} combines conflicting tricks; take at most one of each group: {PROMPT_TRICKS}, {GUIDANCE_TRICKS}"
        )
    name = "+".join(prompt + guidance)
    mode: GuidanceMode = "uniform" if guidance == ["random_guidance"] else "fixed"
    if prompt == ["multidomain"]:
        template = _resolve_template(knobs["template"])
        domains = _resolve_domains(knobs["domains"])
    else:
        template = CLASS_TEMPLATE if prompt == ["class_prompt"] else _resolve_image_template(knobs["image_template"])
        domains = ()
    config = TrickConfig(
        name=name, template=template, domains=domains, guidance_mode=mode, negative_prompt=negative_prompt
    )
    if mode == "fixed" and knobs["guidance_scale"] is not None:
        config = replace(config, guidance_scale=float(knobs["guidance_scale"]))
    if mode == "uniform" and knobs["guidance_range"] is not None:
        config = replace(config, guidance_range=tuple(knobs["guidance_range"]))
    return config


def _resolve_template(template: str | None) -> str:
    if template is None:
        return TEMPLATES["multidomain"]
    if "{" not in template:
        if template not in TEMPLATES:
            raise InvalidArgument(f"unknown template {template!r}; named templates: {', '.join(TEMPLATES)}")
        return TEMPLATES[template]
    if "domain" not in _template_fields(template):
        raise InvalidArgument(f"a multi-domain template needs {{domain}}: {template!r}")
    return template


def _resolve_image_template(template: str | None) -> str:
    if template is None:
        return IMAGE_OF_TEMPLATE
    if "{" not in template:
        if template not in IMAGE_TEMPLATES:
            raise InvalidArgument(
                f"unknown image template {template!r}; named image templates: {', '.join(IMAGE_TEMPLATES)}"
            )
        return IMAGE_TEMPLATES[template]
    if "domain" in _template_fields(template):
        raise InvalidArgument(f"an image template takes no {{domain}} (that is multidomain's template): {template!r}")
    return template


def _resolve_domains(domains: Sequence[str] | str | None) -> tuple[str, ...]:
    if domains is None:
        return DEFAULT_DOMAINS
    if isinstance(domains, str):
        if domains not in DOMAIN_SETS:
            raise InvalidArgument(f"unknown domain set {domains!r}; known: {', '.join(DOMAIN_SETS)}, or give a list")
        return DOMAIN_SETS[domains]
    return tuple(domains)


def _template_fields(template: str) -> set[str]:
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as err:
        raise InvalidArgument(f"malformed template {template!r}: {err}") from None
    unknown = fields - {"class", "domain"}
    if unknown:
        raise InvalidArgument(
            f"template {template!r} has unknown fields {sorted(unknown)}; use {{class}} and {{domain}}"
        )
    if "class" not in fields:
        raise InvalidArgument(f"template {template!r} has no {{class}}")
    return fields


def _check_domains(domains: tuple[str, ...]) -> None:
    if not domains:
        raise InvalidArgument("a multi-domain trick needs at least one domain")
    for domain in domains:
        if not isinstance(domain, str) or not domain.strip():
            raise InvalidArgument(f"unknown domain {domain!r}: a domain must be a non-empty string")
    if len(set(domains)) != len(domains):
        raise InvalidArgument(f"duplicate domains in {list(domains)}")


def _check_guidance(scale: float, bounds: tuple[float, ...]) -> None:
    if not (math.isfinite(scale) and scale >= 0):
        raise InvalidArgument(f"guidance scale must be a non-negative number, got {scale}")
    if len(bounds) != 2:
        raise InvalidArgument(f"guidance range must be (lo, hi), got {bounds}")
    lo, hi = bounds
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0:
        raise InvalidArgument(f"guidance range must be non-negative numbers, got [{lo}, {hi}]")
    if lo > hi:
        raise InvalidArgument(f"guidance range has lo > hi: [{lo}, {hi}]")


def _share(share: float) -> float:
    try:
        return float(share)
    except (TypeError, ValueError):
        raise InvalidArgument(f"a share must be a number, got {share!r}") from None


def _guidance(config: TrickConfig, seed: int, class_name: str, index: int) -> float:
    if config.guidance_mode == "fixed":
        return float(config.guidance_scale)
    lo, hi = config.guidance_range
    u = (_hash_u64("guidance", seed, class_name, index) >> 11) / float(1 << 53)  # uniform in [0, 1), 53 bits
    return lo + (hi - lo) * u


def _hash_u64(purpose: str, seed: int, class_name: str, index: int) -> int:
    # JSON keeps the fields unambiguous whatever characters a class name holds
    key = json.dumps([purpose, seed, class_name, index], ensure_ascii=False).encode("utf-8")
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big")


def _describe(spec: TrickSpec) -> str:
    return repr(spec) if isinstance(spec, str) else "the given mix"
