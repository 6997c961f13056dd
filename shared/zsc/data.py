"""Data by reference: URIs confined to the service's data roots, ImageFolder datasets and safe image decoding."""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from urllib.parse import urlparse

from PIL import Image, UnidentifiedImageError

from zsc.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
MAX_IMAGE_PIXELS = 64 * 1024 * 1024  # 64 MP: far above any dataset image, far below a decompression bomb
MAX_IMAGE_BYTES = 32 << 20
MAX_PATH_CHARS = 4096  # Linux's PATH_MAX
MAX_NAME_BYTES = 255  # NAME_MAX of common filesystems
# Limits of decode calls that name none (dataset files read by the cores); a server process sets them from its config.
_limits = {"max_pixels": MAX_IMAGE_PIXELS, "max_bytes": MAX_IMAGE_BYTES}


def set_image_limits(max_pixels: int, max_bytes: int) -> None:
    """The process-wide default image limits (``zsc serve`` applies its --max-image-* flags here)."""
    if max_pixels < 1 or max_bytes < 1:
        raise InvalidArgument(f"image limits must be positive, got {max_pixels} pixels and {max_bytes} bytes")
    _limits.update(max_pixels=max_pixels, max_bytes=max_bytes)


def resolve_uri(uri: str, roots: list[Path], *, must_exist: bool = True) -> Path:
    """A local path or file:// URI resolved (symlinks included) and checked to lie inside one of ``roots``.

    A relative path resolves against the first root, never the server's working directory, and ``~`` is not
    expanded: a request names data, not the server's home. Errors name the path as sent, never the roots."""
    if not uri:
        raise InvalidArgument("empty path")
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise InvalidArgument(f"file URI {_show(uri)} names host {parsed.netloc!r}; use file:///<path>")
        raw = parsed.path
    elif parsed.scheme and len(parsed.scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise InvalidArgument(f"unsupported URI scheme {parsed.scheme!r}; use a local path or file:// URI")
    else:
        raw = uri
    if not raw:  # file:// alone: it would otherwise resolve to the first root (or once, the working directory)
        raise InvalidArgument(f"path {_show(uri)} is empty")
    if raw.startswith("~"):
        raise InvalidArgument(f"path {_show(uri)} starts with '~'; the server expands no home directory")
    if "\x00" in raw:
        raise InvalidArgument("path contains a NUL byte")
    if len(raw) > MAX_PATH_CHARS:
        raise InvalidArgument(f"path {_show(uri)} is {len(raw)} characters long; the limit is {MAX_PATH_CHARS}")
    if not roots:
        raise FailedPrecondition(f"path {_show(uri)} cannot be used: the server has no data root")
    try:  # the OS's limits and symlink loops fail here, as bad input rather than as server errors
        allowed = [Path(r).resolve() for r in roots]
        resolved = (allowed[0] / raw).resolve(strict=False)  # an absolute path replaces the root
        too_long = [p for p in resolved.parts if len(os.fsencode(p)) > MAX_NAME_BYTES]
        if too_long:
            raise InvalidArgument(f"path {_show(uri)} has a component over {MAX_NAME_BYTES} bytes")
        if not any(resolved == r or resolved.is_relative_to(r) for r in allowed):
            raise InvalidArgument(f"path {_show(uri)} is outside the data root")
        exists = resolved.exists()
    except (OSError, RuntimeError) as err:
        raise InvalidArgument(f"path {_show(uri)} cannot be resolved: {type(err).__name__}") from err
    if must_exist and not exists:
        raise NotFound(f"path {_show(uri)} does not exist")
    return resolved


def output_file(uri: str, roots: list[Path], field: str = "output_uri", what: str = "the features file") -> Path:
    """Where a job will write one file: a path inside ``roots`` that is not a directory (it need not exist yet)."""
    if not uri:
        raise InvalidArgument(f"{field} is empty")
    path = resolve_uri(uri, roots, must_exist=False)
    if path.is_dir():
        raise InvalidArgument(f"{field} {uri!r} is a directory; name {what}")
    return path


MAX_CLASS_NAME_BYTES = 200  # a class name becomes a folder name (synthesis, ImageFolder); filesystems allow 255


def duplicate_class(name: str, field: str) -> str:
    """The one wording of a repeated class name, everywhere one is refused."""
    return f"class {name!r} appears twice in {field}"


def check_class_names(
    values: Sequence[str], field: str = "class_names", max_classes: int | None = None
) -> tuple[str, ...]:
    """Class names exactly as given, or InvalidArgument naming the first fault: the list is non-empty and within
    ``max_classes``; each name is a non-empty printable string of sane length without surrounding whitespace
    (refused, never stripped: a name is matched to a folder and written into prompts as it is); no name repeats."""
    if isinstance(values, str):
        raise InvalidArgument(f"{field} must be a list of names, not one string")
    names = tuple(values)
    if not names:
        raise InvalidArgument(f"{field} is empty")
    if max_classes is not None and len(names) > max_classes:
        raise InvalidArgument(f"{len(names)} class names is over the limit of {max_classes}")
    seen: set[str] = set()
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise InvalidArgument(f"{field}[{i}] is empty")
        if len(name.encode("utf-8")) > MAX_CLASS_NAME_BYTES:
            raise InvalidArgument(f"{field}[{i}] is longer than {MAX_CLASS_NAME_BYTES} UTF-8 bytes")
        if name != name.strip():
            raise InvalidArgument(f"class name {name!r} in {field} has leading or trailing whitespace")
        if not name.isprintable():
            raise InvalidArgument(f"class name {name[:40]!r} in {field} contains control characters")
        if name in seen:
            raise InvalidArgument(duplicate_class(name, field))
        seen.add(name)
    return names


def match_class_folders(
    folders: Sequence[str],
    class_names: Sequence[str] = (),
    folder_to_class: Mapping[str, str] | None = None,
    *,
    root: Path | str = "the dataset",
    field: str = "class_names",
) -> tuple[tuple[str, ...], list[int]]:
    """The label order and each folder's label, matching class names to folders by name, never by position.

    A folder holds the class of its own name unless ``folder_to_class`` (asked for explicitly) maps it to another.
    Given ``class_names`` define the label order and every one needs exactly one folder; without them the classes
    are the (mapped) folder names in sorted folder order. A missing class, an extra folder, a map entry naming no
    folder, or two folders of one class is an InvalidArgument naming them."""
    mapping = dict(folder_to_class or {})
    unknown = sorted(set(mapping) - set(folders))
    if unknown:
        raise InvalidArgument(f"folder_to_class names folders that {root} does not hold: {unknown[:10]}")
    mapped = [mapping.get(f, f) for f in folders]
    holder: dict[str, str] = {}
    for folder, name in zip(folders, mapped, strict=True):
        if name in holder:
            raise InvalidArgument(f"folders {holder[name]!r} and {folder!r} of {root} both hold class {name!r}")
        holder[name] = folder
    if not class_names:
        return check_class_names(mapped, f"the class folders of {root}"), list(range(len(folders)))
    names = check_class_names(class_names, field)
    wanted = set(names)
    missing = [n for n in names if n not in holder]
    extra = [f for f, n in zip(folders, mapped, strict=True) if n not in wanted]
    if missing or extra:
        faults = ([f"missing class {missing[:10]} (no folder of that name)"] if missing else []) + (
            [f"extra folder {extra[:10]} (no such class)"] if extra else []
        )
        raise InvalidArgument(
            f"{field} do not match the class folders of {root}: {', '.join(faults)}; folders are matched to class "
            "names exactly (map others explicitly with folder_to_class, e.g. zsc --class-map FOLDER=NAME)"
        )
    label = {n: i for i, n in enumerate(names)}
    return names, [label[n] for n in mapped]


def _show(uri: str, limit: int = 200) -> str:
    return repr(uri if len(uri) <= limit else uri[:limit] + "...")


def decode_image(
    data: bytes, *, max_pixels: int | None = None, max_bytes: int | None = None, what: str = "image"
) -> Image.Image:
    """Decode PNG/JPEG bytes to RGB, refusing empty, corrupt, truncated and oversized images with one clear line.

    Limits left None take the process defaults (see ``set_image_limits``)."""
    max_pixels = _limits["max_pixels"] if max_pixels is None else max_pixels
    max_bytes = _limits["max_bytes"] if max_bytes is None else max_bytes
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
    max_bytes = limits.get("max_bytes") or _limits["max_bytes"]
    if path.stat().st_size > max_bytes:  # checked before reading, so a huge file never sits in memory
        raise ResourceExhausted(f"image {path.name} is {path.stat().st_size} bytes; the limit is {max_bytes}")
    return decode_image(path.read_bytes(), what=f"image {path.name}", **limits)


@dataclass
class ImageFolder:
    """``<root>/<class>/<image>``: samples sorted within each class; ``classes`` are the label order and ``folders``
    the folder that holds each label's images (by default the sorted folder names, which are then the classes)."""

    root: Path
    classes: list[str]
    samples: list[tuple[Path, int]]
    folders: list[str] = dataclass_field(default_factory=list)

    def __post_init__(self) -> None:
        self.folders = list(self.folders or self.classes)

    @classmethod
    def open(
        cls,
        root: Path,
        limit: int = 0,
        class_names: Sequence[str] = (),
        folder_to_class: Mapping[str, str] | None = None,
        *,
        field: str = "class_names",
    ) -> ImageFolder:
        """The dataset under ``root``; with ``class_names`` (and an explicit ``folder_to_class``) matched to the
        folders by name as ``match_class_folders`` does, labels in the order of ``class_names``. Every fault,
        an unreadable folder included, is InvalidArgument."""
        if not root.is_dir():
            raise InvalidArgument(f"dataset {root} is not a directory")
        try:  # a folder the server may not list is bad input, not a server fault
            folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
            if not folders:
                raise InvalidArgument(f"dataset {root} has no class folders")
            classes, labels = match_class_folders(folders, class_names, folder_to_class, root=root, field=field)
            per_folder = [
                sorted(p for p in (root / f).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
                for f in folders
            ]
        except OSError as err:
            raise InvalidArgument(f"dataset {root} cannot be read: {type(err).__name__}") from err
        if not any(per_folder):
            raise InvalidArgument(f"dataset {root} has no images")
        # picked in folder order, so which images a limit keeps does not depend on the order the names came in
        samples = sorted(((p, labels[i]) for p, i in _balanced(per_folder, limit)), key=lambda s: (s[1], s[0]))
        by_label = [""] * len(classes)
        for folder, label in zip(folders, labels, strict=True):
            by_label[label] = folder
        return cls(root=root, classes=list(classes), samples=samples, folders=by_label)

    def __len__(self) -> int:
        return len(self.samples)

    def mapped_folders(self) -> dict[str, str]:
        """{folder: class} of the folders not named as their class (what an explicit map renamed), for the record."""
        return {f: c for f, c in zip(self.folders, self.classes, strict=True) if f != c}


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
