"""DVC-compatible content hashes, so a model version's lineage tags can be matched against ``dvc.lock``.

DVC (3.x, ``md5`` hash) records a file as the md5 of its bytes, and a directory as the md5 of a JSON listing of its
files followed by ``.dir``: ``json.dumps(sorted([{"md5": <file md5>, "relpath": <posix path>}, ...]),
sort_keys=True)``, sorted by relpath (``dvc_data.hashfile.tree.Tree.digest``). zsc computes the same value from the
data itself, so a version trained on a pipeline output carries the exact hash that ``dvc.lock`` lists for it, whether
or not the data was ever DVC-tracked, and on a machine without the DVC repository (a remote service).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

MD5_TAG = "zsc.dataset.md5"


def file_digests(path: str | os.PathLike[str], *algorithms: str, chunk_size: int = 1 << 20) -> tuple[str, ...]:
    """Hex digests of a file's bytes, one per hashlib algorithm name, from one chunked read (zsc's one file
    hasher: the sha256 of a lineage tag and DVC's md5 of the same file cost one pass)."""
    digests = [hashlib.new(name, usedforsecurity=False) for name in algorithms]
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            for digest in digests:
                digest.update(chunk)
    return tuple(digest.hexdigest() for digest in digests)


def file_md5(path: str | os.PathLike[str]) -> str:
    return file_digests(path, "md5")[0]


def dvc_md5(path: str | os.PathLike[str]) -> str:
    """The md5 DVC records for ``path``: ``<md5>`` for a file, ``<md5>.dir`` for a directory."""
    path = Path(path)
    if not path.is_dir():
        return file_md5(path)
    return dir_md5({p.relative_to(path).as_posix(): file_md5(p) for p in path.rglob("*") if p.is_file()})


def dir_md5(file_md5s: Mapping[str, str]) -> str:
    """DVC's ``<md5>.dir`` of a directory from each file's md5 by POSIX relative path (for callers that read the
    files anyway and hash them as they go)."""
    entries = [{"md5": md5, "relpath": rel} for rel, md5 in sorted(file_md5s.items())]
    listing = json.dumps(entries, sort_keys=True).encode("utf-8")
    return hashlib.md5(listing, usedforsecurity=False).hexdigest() + ".dir"
