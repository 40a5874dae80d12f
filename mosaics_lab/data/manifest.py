"""The prepared dataset's format: layout constants, manifests (read locally or remotely), remote paths.

The ground floor of the data layer: every other data module (and the tokenizers) reads manifests
through it, so none of them imports another's job.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from mosaics_lab.data import DataError
from mosaics_lab.data.tokenizers import (
    MANIFEST_FILE,
)

FORMAT_TOKENS = "tokens"
FORMAT_EXAMPLES = "examples"
MANIFEST_VERSION = 1
SPLITS = ("train", "val")
# The tasks package names its validation stream "validation"; the shard directory is "val".
TASK_SPLITS = {"train": "train", "val": "validation"}
REMOTE_PREFIXES = ("s3://", "gs://", "gcs://", "az://", "azure://", "abfs://", "hf://", "http://", "https://")


def is_remote(path: str | Path) -> bool:
    return str(path).startswith(REMOTE_PREFIXES)


# --- reading manifests (local or remote) ----------------------------------------------------------


def read_text_file(dataset_dir: str | Path, name: str) -> str:
    """The text of ``dataset_dir/name``; remote directories are read through litdata's downloaders."""
    if is_remote(dataset_dir):
        from litdata.streaming.downloader import get_downloader

        url = str(dataset_dir).rstrip("/")
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, name)
            try:
                get_downloader(url, tmp, []).download_file(f"{url}/{name}", local)
                return Path(local).read_text(encoding="utf-8")
            except Exception as exc:  # each object store raises its own types
                raise DataError(f"cannot read {url}/{name}: {exc}") from exc
    path = Path(dataset_dir) / name
    if not path.is_file():
        raise DataError(f"{path} not found")
    return path.read_text(encoding="utf-8")


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of the prepared dataset at ``path`` (a local directory or an s3://... URL)."""
    if not is_remote(path):
        root = Path(path)
        if not root.exists():
            raise DataError(
                f"dataset directory {root} does not exist; create it with `mosaics-lab prepare text FILES... "
                f"--out {root}` (or jsonl / parquet / synthetic), or set data.generate in the recipe"
            )
        if not (root / MANIFEST_FILE).is_file():
            raise DataError(
                f"{root} has no {MANIFEST_FILE}, so it is not a prepared dataset; prepare it with "
                f"`mosaics-lab prepare text FILES... --out {root}` (or jsonl / parquet / synthetic)"
            )
    try:
        manifest = json.loads(read_text_file(path, MANIFEST_FILE))
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}/{MANIFEST_FILE} is not valid JSON ({exc}); prepare the dataset again"
        ) from exc
    if manifest.get("format") not in (FORMAT_TOKENS, FORMAT_EXAMPLES):
        raise DataError(
            f"{path}/{MANIFEST_FILE}: unknown format {manifest.get('format')!r}; prepare the dataset again"
        )
    return manifest


def _versions() -> dict[str, str]:
    import litdata

    import mosaics_lab

    return {"mosaics_lab": mosaics_lab.__version__, "litdata": litdata.__version__}


def write_manifest(tmp: Path, body: dict[str, Any], source: dict[str, Any]) -> None:
    manifest = {"manifest_version": MANIFEST_VERSION, **body, "source": source, "versions": _versions()}
    (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
