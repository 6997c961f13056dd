"""Data by reference: URIs confined to the service's data roots, ImageFolder datasets and safe image decoding."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from PIL import Image, UnidentifiedImageError

from zsc.errors import InvalidArgument, NotFound, ResourceExhausted

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
MAX_IMAGE_PIXELS = 64 * 1024 * 1024  # 64 MP: far above any dataset image, far below a decompression bomb
MAX_IMAGE_BYTES = 32 << 20


def resolve_uri(uri: str, roots: list[Path], *, must_exist: bool = True) -> Path:
    """A local path or file:// URI resolved (symlinks included) and checked to lie inside one of ``roots``."""
    if not uri:
        raise InvalidArgument("empty path")
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        raw = parsed.path
    elif parsed.scheme and len(parsed.scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise InvalidArgument(f"unsupported URI scheme {parsed.scheme!r}; use a local path or file:// URI")
    else:
        raw = uri
    if "\x00" in raw:
        raise InvalidArgument("path contains a NUL byte")
    path = Path(raw).expanduser()
    resolved = path.resolve(strict=False)
    allowed = [r.resolve() for r in roots]
    if not any(resolved == r or resolved.is_relative_to(r) for r in allowed):
        raise InvalidArgument(f"path {uri!r} is outside the data root ({', '.join(map(str, allowed))})")
    if must_exist and not resolved.exists():
        raise NotFound(f"path {uri!r} does not exist")
    return resolved


def decode_image(
    data: bytes, *, max_pixels: int = MAX_IMAGE_PIXELS, max_bytes: int = MAX_IMAGE_BYTES, what: str = "image"
) -> Image.Image:
    """Decode PNG/JPEG bytes to RGB, refusing empty, corrupt, truncated and oversized images with one clear line."""
    if not data:
        raise InvalidArgument(f"{what} is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ResourceExhausted(f"{what} is {len(data)} bytes; the limit is {max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ResourceExhausted(f"{what} is {width}x{height} pixels; the limit is {max_pixels}")
            image.load()  # decode now: a truncated file fails here, not later in a worker
    except ResourceExhausted:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ResourceExhausted(f"{what} exceeds the pixel limit (decompression bomb)") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise InvalidArgument(f"{what} cannot be decoded: {type(err).__name__}") from err
    return image.convert("RGB")


def load_image_file(path: Path, **limits: int) -> Image.Image:
    return decode_image(path.read_bytes(), what=f"image {path.name}", **limits)


@dataclass
class ImageFolder:
    """``<root>/<class>/<image>``: classes are the sorted sub-folders, samples sorted within each class."""

    root: Path
    classes: list[str]
    samples: list[tuple[Path, int]]

    @classmethod
    def open(cls, root: Path, limit: int = 0) -> ImageFolder:
        if not root.is_dir():
            raise InvalidArgument(f"dataset {root} is not a directory")
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise InvalidArgument(f"dataset {root} has no class folders")
        per_class = [
            sorted(p for p in (root / c).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            for c in classes
        ]
        if not any(per_class):
            raise InvalidArgument(f"dataset {root} has no images")
        samples = _balanced(per_class, limit)
        return cls(root=root, classes=classes, samples=samples)

    def __len__(self) -> int:
        return len(self.samples)


def _balanced(per_class: list[list[Path]], limit: int) -> list[tuple[Path, int]]:
    """All samples, or the first ``limit`` in round-robin class order, so a small limit still covers every class."""
    if limit <= 0:
        return [(p, label) for label, paths in enumerate(per_class) for p in paths]
    picked: list[tuple[Path, int]] = []
    depth = 0
    while len(picked) < limit and any(depth < len(paths) for paths in per_class):
        for label, paths in enumerate(per_class):
            if depth < len(paths) and len(picked) < limit:
                picked.append((paths[depth], label))
        depth += 1
    return sorted(picked, key=lambda s: (s[1], s[0]))
