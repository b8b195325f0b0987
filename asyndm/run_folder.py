"""What a run folder holds: its file names, its tables' columns, and the atomic writes that fill it.

The one schema the sampler's runner writes and evaluation reads (evaluation imports this module and
never the sampler). Every write goes through a temporary file that is renamed over the target, so a
killed run leaves nothing half-written that counts as done. Writers take ``(path, content)``.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from PIL import Image

from .errors import RunFolderError

log = logging.getLogger(__name__)

# manifest.csv: one row per finished image. ``config_hash`` names the run that wrote it; then the size
# and checksum of the image, latent and mask file as they were written (empty where not saved), which a
# resume verifies. Evaluation reads folders written without these columns too.
RECORD_PREFIXES = {"": "image", "latent_": "latent", "mask_": "mask"}
RECORD_COLUMNS = [f"{prefix}{field}" for prefix in RECORD_PREFIXES for field in ("bytes", "sha256")]
MANIFEST_COLUMNS = [
    "image_idx", "prompt_idx", "prompt", "category", "items", "k", "seed", "variant", "file", "config_hash",
    *RECORD_COLUMNS,
]
MANIFEST_REQUIRED = [c for c in MANIFEST_COLUMNS if c != "config_hash" and c not in RECORD_COLUMNS]
SHA256_CHARS = 16  # a prefix: enough to tell a damaged file from the one written, short enough to read
# timesteps.csv: per image, variant and step, the mean timestep of the item pixels and of the rest.
TIMESTEP_COLUMNS = ["image_idx", "variant", "step", "item_mean", "background_mean"]
# results.csv: one row per image, variant and metric.
RESULT_COLUMNS = ["image_idx", "prompt_idx", "prompt", "category", "seed", "variant", "metric", "value"]


def image_file(image_idx: int, variant: str) -> str:
    return f"images/{image_idx:05}_{variant}.png"


def latent_file(image_idx: int, variant: str) -> str:
    return f"latents/{image_idx:05}_{variant}.npy"


def mask_file(image_idx: int, variant: str = "asyndm") -> str:
    return f"masks/{image_idx:05}_{variant}.png"


# Videos (model.num_frames > 1): the image file above holds the first, middle and last frames side by
# side (what reports and image metrics see); every frame, the video and the mask video sit beside it.
VIDEO_FORMATS = ("mp4", "gif")  # mp4 where an encoder is installed (the ``video`` extra), else gif


def frame_file(image_idx: int, variant: str, frame: int) -> str:
    return f"frames/{image_idx:05}_{variant}/{frame:03}.png"


def video_file(image_idx: int, variant: str, extension: str) -> str:
    return f"videos/{image_idx:05}_{variant}.{extension}"


def mask_video_file(image_idx: int, variant: str, extension: str) -> str:
    return f"masks/{image_idx:05}_{variant}.{extension}"


def frame_files(run_dir: Path, image: str) -> list[Path]:
    """The frames of the video whose image file is ``image`` (a path in the run folder), in order; an
    image of a run without videos is its own single frame."""
    stem = Path(image).stem
    folder = Path(run_dir) / "frames" / stem
    frames = sorted(folder.glob("*.png")) if folder.is_dir() else []
    return frames or [Path(run_dir) / image]


def video_companions(run_dir: Path, image_idx: int, variant: str) -> list[str]:
    """The frames, video and mask video beside an image file in ``run_dir`` (none for image models),
    as paths in the run folder: what a merge copies with the image."""
    run_dir = Path(run_dir)
    stem = f"{image_idx:05}_{variant}"
    found = [f"frames/{stem}/{p.name}" for p in sorted((run_dir / "frames" / stem).glob("*.png"))]
    for extension in VIDEO_FORMATS:
        found += [name for name in (video_file(image_idx, variant, extension), mask_video_file(image_idx, variant, extension))
                  if (run_dir / name).is_file()]
    return found


def shard_suffix(index: int, count: int) -> str:
    """'' for an unsharded run, else '.shard-{index}-of-{count}' (for manifest and status files)."""
    return "" if count == 1 else f".shard-{index}-of-{count}"


def manifest_name(index: int, count: int) -> str:
    return f"manifest{shard_suffix(index, count)}.csv"


def timesteps_name(index: int, count: int) -> str:
    """Each shard traces its own batches' timesteps; the merge concatenates them."""
    return f"timesteps{shard_suffix(index, count)}.csv"


def file_names(image_idx: int, variant: str) -> dict[str, str]:
    """Record prefix (RECORD_PREFIXES) -> the name of that file of one image of one variant."""
    return {"": image_file(image_idx, variant), "latent_": latent_file(image_idx, variant),
            "mask_": mask_file(image_idx, variant)}


class Record(NamedTuple):
    """A file as it was written: its size and the start of its SHA-256."""

    size: int
    sha256: str


def record_of(path: Path) -> Record | None:
    """The file's size and checksum now; None where it cannot be read."""
    try:
        stat = Path(path).stat()
        return Record(stat.st_size, _sha256(str(path), stat.st_size, stat.st_mtime_ns))
    except OSError:
        return None


@lru_cache(maxsize=None)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """Keyed by size and modification time too: a file rewritten since is read again."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:SHA256_CHARS]


def verified(path: Path, record: Record | None = None) -> bool:
    """The file is the one that was written: its size and checksum match ``record`` (from the manifest),
    which also catches damage a decode cannot see (a changed number in a .npy); without a record (a
    folder written before the manifest had them, or a file written after the last manifest), it reads
    back whole (``intact``)."""
    if record is None:
        return intact(path)
    return record_of(path) == record


def recorded_files(run_dir: Path, first: str | None = "manifest.csv") -> dict[str, Record]:
    """File name -> Record, from the manifests in ``run_dir`` (``first`` wins, then the others, e.g.
    the shards' that shared the folder). A manifest that cannot be read records nothing: its files
    are then verified by a decode, and the manifest is written again."""
    run_dir = Path(run_dir)
    paths = ([run_dir / first] if first else []) + [p for p in sorted(run_dir.glob("manifest*.csv")) if p.name != first]
    records: dict[str, Record] = {}
    for path in paths:
        if not path.is_file():
            continue
        try:
            table = read_table(path, dtype=str, keep_default_na=False)
        except (OSError, ValueError, UnicodeDecodeError) as error:
            log.warning("%s cannot be read (%s); its files are checked by decoding them and it is written again",
                        path, " ".join(str(error).split())[:120])
            continue
        if "image_idx" not in table.columns or "variant" not in table.columns:
            continue
        for row in table.to_dict("records"):
            if not str(row["image_idx"]).isdigit():
                continue
            names = file_names(int(row["image_idx"]), str(row["variant"]))
            for prefix, name in names.items():
                size, sha = str(row.get(f"{prefix}bytes", "")), str(row.get(f"{prefix}sha256", ""))
                if size.isdigit() and len(sha) == SHA256_CHARS and name not in records:
                    records[name] = Record(int(size), sha)
    return records


def intact(path: Path) -> bool:
    """The file is there and reads back whole: a PNG decodes, a .npy loads. A resume counts only intact
    files as done, so a file truncated or damaged after it was written is sampled again."""
    try:
        stat = Path(path).stat()
    except OSError:
        return False
    return _reads_back(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=None)
def _reads_back(path: str, size: int, mtime_ns: int) -> bool:
    """Keyed by size and modification time too: a file rewritten since is read again."""
    try:
        if path.endswith(".png"):
            with Image.open(path) as image:
                image.load()
        elif path.endswith(".npy"):
            np.load(path, allow_pickle=False)
        else:
            return size > 0
    except Exception:  # noqa: BLE001 - any failure to read it back means it is not done
        return False
    return True


def read_table(path: Path, **read_csv) -> pd.DataFrame:
    """A table of the run folder, without a last row cut short. Every table is written whole and ends
    in a newline, so text after the last newline is a row cut mid-write or a damaged tail: it is
    dropped (and said), never read as a row with missing values. ``read_csv``: pandas' options."""
    text = Path(path).read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        cut = text.rfind("\n") + 1
        log.warning("%s: its last row is cut short (%r); it is left out and will be redone", path, text[cut:][:60])
        text = text[:cut]
    return pd.read_csv(io.StringIO(text), **read_csv)


# ------------------------------------------------------------------ atomic writes


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file, flush it to disk, rename it over ``path``, then flush the folder:
    after a crash or power loss ``path`` holds either the old bytes or all of the new ones. The file's
    mode follows the umask (0644 under 022), as a plain ``open`` would, so collaborators can read it.
    A write the folder refuses (a full disk, a read-only one) leaves no temporary file behind and
    raises RunFolderError: one line that says what to do."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it private (0600); a run folder follows the umask
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno in FOLDER_ERRORS:
            raise RunFolderError(f"cannot write {path}: {error.strerror or os.strerror(error.errno)}; "
                                 f"{FOLDER_ERRORS[error.errno]}, then rerun the same command (it resumes)") from None
        raise
    _fsync_folder(path.parent)


# Failures of a write that are the folder's, not the program's: one line saying what to do.
FOLDER_ERRORS = {
    errno.ENOSPC: "free some space on that disk (or choose another run_dir=...)",
    errno.EDQUOT: "free some of your quota on that disk (or choose another run_dir=...)",
    errno.EROFS: "choose a folder on a writable disk (run_dir=...)",
    errno.EACCES: "make the folder writable (or choose another run_dir=...)",
}


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform allows opening folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_table(path: Path, frame: pd.DataFrame) -> None:
    """A table as CSV, without the index."""
    atomic_write_text(path, frame.to_csv(index=False))


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str))
