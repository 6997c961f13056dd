"""Model profiles: which concrete model plays each role (timm-style registry of named entries).

A model reference is a string:
- ``tiny:<config>``: a seeded random-weight model of the real architecture, built offline from
  ``zsc/profiles/configs/<config>.json``;
- ``open_clip:<arch>/<pretrained tag>``, ``hf-hub:<org/repo>``, ``local-dir:<path>``: real open_clip weights;
- a Hugging Face hub id (``stabilityai/stable-diffusion-2-base``) or a local diffusers directory: real diffusers
  weights.

``--profile`` takes a registered name or the path of a JSON file with the same fields, so users point zsc at
their own local weights without code changes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from zsc.errors import InvalidArgument, NotFound

if TYPE_CHECKING:  # the CLI imports profiles; torch is imported where a device or dtype is asked for
    import torch

# torch.compile's modes (torch.compile(mode=...)).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    clip: str | None
    text_to_image: str | None
    diffusion_classifier: str | None
    downstream_arch: str
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    extra: dict[str, str] = field(default_factory=dict)
    # Feature extractors for ExtractFeatures when they are not CLIP's towers (zsc.models.lite); None: use CLIP's.
    image_encoder: str | None = None
    text_encoder: str | None = None
    # torch.compile mode for the Diffusion Classifier's UNet (e.g. "max-autotune"); None: eager. Worth it on CUDA,
    # where a long evaluation amortizes the compile; on CPU inductor gains ~1.2-1.4x (bench/diffusion_classifier.py).
    compile_unet: str | None = None

    def __post_init__(self) -> None:
        if self.compile_unet is not None and self.compile_unet not in COMPILE_MODES:
            raise InvalidArgument(
                f"profile {self.name!r}: unknown compile_unet {self.compile_unet!r}; "
                f"choose one of {', '.join(COMPILE_MODES)} or null"
            )

    def torch_device(self) -> torch.device:
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def torch_dtype(self) -> torch.dtype:
        """fp32 on CPU, fp16 on CUDA unless the profile says otherwise (diffusers' convention)."""
        import torch

        if self.dtype == "auto":
            return torch.float16 if self.torch_device().type == "cuda" else torch.float32
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[self.dtype]

    @property
    def is_tiny(self) -> bool:
        return self.name == "tiny"


_PROFILES: dict[str, Profile] = {}


def register_profile(profile: Profile) -> Profile:
    _PROFILES[profile.name] = profile
    return profile


def list_profiles() -> list[str]:
    return sorted(_PROFILES)


def get_profile(name_or_path: str) -> Profile:
    """A registered profile by name, or a JSON profile file."""
    if name_or_path in _PROFILES:
        return _PROFILES[name_or_path]
    path = Path(name_or_path)
    if path.suffix == ".json" and path.is_file():
        data = json.loads(path.read_text())
        known = {f.name for f in dataclasses.fields(Profile)}
        unknown = set(data) - known
        if unknown:
            raise InvalidArgument(f"profile file {path} has unknown fields: {sorted(unknown)}")
        return Profile(**data)
    raise NotFound(f"unknown profile {name_or_path!r}; registered: {', '.join(list_profiles())}, or a .json file")


register_profile(
    Profile(
        name="tiny",
        description="Seeded random-weight models of the real architectures, built offline. Accuracy is chance "
        "level by design: it proves the plumbing, not the learning.",
        clip="tiny:zsc-tiny-clip",
        text_to_image="tiny:zsc-tiny-sd",
        diffusion_classifier="tiny:zsc-tiny-sd",
        downstream_arch="resnet18",
        device="cpu",
        dtype="float32",
    )
)
register_profile(
    Profile(
        name="paper",
        description="The papers' real weights from the Hugging Face hub cache or local dirs: OpenCLIP ViT-B/16 "
        "(openai), SD 1.4 for synthesis, SD 2.0 base for the Diffusion Classifier.",
        clip="open_clip:ViT-B-16/openai",
        text_to_image="CompVis/stable-diffusion-v1-4",
        diffusion_classifier="stabilityai/stable-diffusion-2-base",
        downstream_arch="resnet50",
    )
)
register_profile(
    Profile(
        name="lite",
        description="Small real pretrained models from PyPI, offline on CPU: EfficientNet-Lite0 (ImageNet) image "
        "features (pooled pre-logits, 1280-d) and MiniLM-L6 sentence features (384-d). The two spaces are not "
        "aligned and there is no CLIP, so CLIP zero-shot, FLPT Align and SHIP's prompts answer FAILED_PRECONDITION; "
        "feature extraction and DFZSL with init_from_teacher work.",
        clip=None,
        text_to_image=None,
        diffusion_classifier=None,
        downstream_arch="resnet18",
        image_encoder="efficientnet-lite0:pypi",
        text_encoder="minilm:pypi",
        device="auto",
        dtype="float32",
    )
)
