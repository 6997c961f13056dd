"""Prompt templates and class-name checks shared by the zero-shot methods."""

from __future__ import annotations

from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

from zsc.data import check_class_names
from zsc.errors import InvalidArgument

MAX_CLASSES = 10_000
MAX_TEMPLATES = 256

# CLIP's CIFAR-10/100 prompt ensemble (Radford et al. 2021, the prompts published with CLIP).
CIFAR_TEMPLATES = tuple(
    f"a {quality}photo of {article} {size}{{}}."
    for article in ("a", "the")
    for quality, size in [
        ("", ""),
        ("blurry ", ""),
        ("black and white ", ""),
        ("low contrast ", ""),
        ("high contrast ", ""),
        ("bad ", ""),
        ("good ", ""),
        ("", "small "),
        ("", "big "),
    ]
)

# open_clip stores its ensembles as callables; applied to "{}" they give format strings.
TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "openai_imagenet": tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES),
    "simple_imagenet": tuple(t("{}") for t in SIMPLE_IMAGENET_TEMPLATES),
    "cifar": CIFAR_TEMPLATES,
    "single": ("a photo of a {}.",),
}
DEFAULT_TEMPLATE_SET = "openai_imagenet"


def resolve_templates(templates: list[str] | tuple[str, ...], template_set: str = "") -> tuple[str, ...]:
    """Custom templates (each with "{}" or "{c}") win over a named set; empty means the default set."""
    if templates:
        if len(templates) > MAX_TEMPLATES:
            raise InvalidArgument(f"{len(templates)} templates is over the limit of {MAX_TEMPLATES}")
        out = []
        for t in templates:
            if t.count("{}") + t.count("{c}") != 1 or len(t) > 1000:
                raise InvalidArgument(f"template {t[:80]!r} must contain exactly one '{{}}' or '{{c}}'")
            out.append(t.replace("{c}", "{}"))
        return tuple(out)
    name = template_set or DEFAULT_TEMPLATE_SET
    if name not in TEMPLATE_SETS:
        raise InvalidArgument(f"unknown template set {name!r}; one of {', '.join(TEMPLATE_SETS)}")
    return TEMPLATE_SETS[name]


def validate_class_names(names: list[str] | tuple[str, ...], field: str = "class_names") -> tuple[str, ...]:
    """The zero-shot methods' class names: ``zsc.data.check_class_names`` under their class limit."""
    return check_class_names(names, field, MAX_CLASSES)
