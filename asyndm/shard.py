"""Sharding one run over processes, GPUs or nodes, and merging the shards into one run folder.

The plan of a run is global (METHOD.md §7): batch b holds fixed image indices and seeds, whatever
the shard. ``shard.index=i shard.count=n`` samples batches i, i+n, i+2n, ... of that plan, so the n
shards together write exactly the files of the unsharded run, under the same names and with the
same bytes. A shard writes ``manifest.shard-{i}-of-{n}.csv`` and ``status.shard-{i}-of-{n}.json``,
never manifest.csv, so shards may share one folder; evaluation waits for the merge.

Merge the shard folders into ``OUT`` (manifest.csv as the unsharded run writes it), then score it
with the run's own ``eval`` settings::

    python -m asyndm.shard OUT SHARD_DIR [SHARD_DIR ...] [--no-eval]
    python -m asyndm.shard RUN_DIR        # shards that shared one folder: merge in place

(Where the shards shared one folder, rerunning the unsharded command does the same: it finds
every image done, writes manifest.csv and evaluates.)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd
from omegaconf import OmegaConf

from evaluation.pipeline import run_after_sampling

from . import config as config_mod
from .errors import AsyndmError, exit_status, take_debug_flag
from .plan import files_for, load_run_prompts, manifest_rows, plan_batches
from .run_folder import atomic_write_bytes, image_file, read_table, recorded_files, verified, video_companions, write_table
from .sweep import write_status
from .variants import ordered

SHARD_MANIFEST = re.compile(r"^manifest\.shard-(\d+)-of-(\d+)\.csv$")


class MergeError(AsyndmError):
    """Shard folders that do not add up to one run."""


def shards_in(folder: Path) -> list[tuple[int, int]]:
    """(index, count) of every shard manifest in ``folder``."""
    found = []
    for path in sorted(Path(folder).glob("manifest.shard-*-of-*.csv")):
        match = SHARD_MANIFEST.match(path.name)
        if match:
            found.append((int(match.group(1)), int(match.group(2))))
    return found


def _copy(src: Path, dst: Path) -> None:
    """Copy atomically; a file already at ``dst`` must be byte-identical."""
    if src.resolve() == dst.resolve():
        return
    data = src.read_bytes()
    if dst.is_file():
        if dst.read_bytes() != data:
            raise MergeError(f"{dst} exists and differs from {src}: merge into an empty folder")
        return
    atomic_write_bytes(dst, data)


def merge_shards(out_dir: Path, shard_dirs: Sequence[Path] = (), evaluate: bool = True):
    """Merge shard folders into ``out_dir`` and return its manifest (the unsharded run's rows).

    Checks that the shards ran the same settings (config hash) and that together they hold every
    file of the run; copies images (and latents, masks) into ``out_dir``; writes config.yaml with
    shard 0 of 1, manifest.csv and status.json; then scores the run when its config asks for it.
    """
    out_dir = Path(out_dir)
    shard_dirs = [Path(d) for d in shard_dirs] or [out_dir]
    configs = {}
    for folder in shard_dirs:
        if not (folder / "config.yaml").is_file():
            raise MergeError(f"{folder} holds no config.yaml: pass the folders of "
                             f"`asyndm ... shard.index=i shard.count=n` runs")
        try:
            configs[folder] = OmegaConf.load(folder / "config.yaml")
            configs[folder].shard.index  # noqa: B018 - a run's config has one
        except Exception as error:  # noqa: BLE001 - anything that is not a run's config.yaml
            raise MergeError(f"{folder / 'config.yaml'} is damaged ({' '.join(str(error).split())[:100]}); rerun "
                             f"that shard's command to write it again") from None
    hashes = {str(c.get("config_hash")) for c in configs.values()}
    if len(hashes) != 1:
        listing = ", ".join(f"{f} ({c.get('config_hash')})" for f, c in configs.items())
        raise MergeError(f"the shard folders ran different settings (config hashes {listing}); "
                         f"merge shards of one run only")
    run_variants = ordered(configs[shard_dirs[0]].variants)
    stale = {str(f): config_mod.stale_rule_variants(run_variants, c.get("rule_revisions")) for f, c in configs.items()}
    if len({tuple(v) for v in stale.values()}) > 1:
        raise MergeError(f"the shard folders sampled {', '.join(sorted({v for vs in stale.values() for v in vs}))} "
                         f"with different asyndm versions (rule_revisions in config.yaml: "
                         f"{', '.join(f for f, vs in stale.items() if vs)} is older); rerun those shards")
    shards = {(i, n) for folder in shard_dirs for i, n in shards_in(folder)}
    counts = {n for _, n in shards}
    if len(counts) != 1:
        raise MergeError(f"shard manifests in {[str(f) for f in shard_dirs]}: found shard counts "
                         f"{sorted(counts) or 'none'}; expected manifest.shard-<i>-of-<n>.csv files of one shard.count")
    count = counts.pop()
    absent = sorted(set(range(count)) - {i for i, _ in shards})
    if absent:
        raise MergeError(f"shards {absent} of {count} are missing (no manifest.shard-<i>-of-{count}.csv); run "
                         f"`asyndm ... shard.index=<i> shard.count={count}` for them or pass their folders")

    cfg = configs[shard_dirs[0]].copy()
    cfg.shard.index, cfg.shard.count = 0, 1
    specs = load_run_prompts(cfg)
    s = cfg.sample
    batches = plan_batches(specs, s.images_per_prompt, s.batch_size, cfg.seed)
    variants = ordered(cfg.variants)  # as run.py orders them (composed variants too)
    records = [recorded_files(d, None) for d in shard_dirs]  # each shard's manifest: what it wrote
    missing = []
    for batch in batches:
        for job in batch:
            for variant in variants:
                for name in files_for(job, variant, cfg.save):
                    src = next((d / name for d, r in zip(shard_dirs, records) if verified(d / name, r.get(name))),
                               None)
                    if src is None:
                        missing.append(name)
                    else:
                        _copy(src, out_dir / name)
                folder = next((d for d in shard_dirs if (d / image_file(job.image_idx, variant)).is_file()), None)
                for name in video_companions(folder, job.image_idx, variant) if folder is not None else ():
                    _copy(folder / name, out_dir / name)  # a video's frames and videos beside its image
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise MergeError(f"{len(missing)} files of the run are in no shard folder, or damaged there "
                         f"({', '.join(missing[:3])}{more}): a shard did not finish; rerun its command (it resumes "
                         f"and restores damaged files) and merge again")
    try:
        traces = [read_table(p) for d in shard_dirs for p in sorted(d.glob("timesteps.shard-*-of-*.csv"))]
    except (ValueError, UnicodeDecodeError) as error:
        raise MergeError(f"a shard's timesteps table is damaged ({' '.join(str(error).split())[:100]}); rerun "
                         f"that shard's command (it rebuilds the table) and merge again") from None
    if traces:
        merged = pd.concat(traces, ignore_index=True).drop_duplicates(["image_idx", "variant", "step"])
        write_table(out_dir / "timesteps.csv", merged.sort_values(["variant", "image_idx", "step"], kind="stable"))
    atomic_write_bytes(out_dir / "config.yaml", OmegaConf.to_yaml(cfg).encode())
    merged_records = {name: record for r in reversed(records) for name, record in r.items()}
    manifest = manifest_rows(out_dir, batches, variants, str(cfg.config_hash), cfg.save, merged_records)
    write_table(out_dir / "manifest.csv", manifest)
    write_status(out_dir / "status.json", "completed", merged_from=[str(d) for d in shard_dirs])
    if evaluate and (cfg.get("eval") or (cfg.get("logger") or {}).get("name", "none") != "none"):
        run_after_sampling(out_dir, cfg)
    return manifest


def main(argv: list[str] | None = None) -> int:
    argv = take_debug_flag(list(sys.argv[1:] if argv is None else argv))
    parser = argparse.ArgumentParser(prog="asyndm-merge", description="Merge the folders of a sharded run into one "
                                     "run folder; score it.",
                                     epilog="--debug (or ASYNDM_DEBUG=1): show the traceback of an error")
    parser.add_argument("out", type=Path, help="the merged run folder (created); alone: the folder the shards shared")
    parser.add_argument("shards", type=Path, nargs="*", help="shard folders (with manifest.shard-<i>-of-<n>.csv)")
    parser.add_argument("--no-eval", action="store_true", help="merge only; score later with `asyndm-eval OUT`")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        print(f"asyndm-merge: error: {args.out} is a file; the merged run needs a folder", file=sys.stderr)
        return 2
    # Bad input: folders that are not shards of one run, damaged files in them; scoring's own errors.
    def merge() -> int:
        manifest = merge_shards(args.out, args.shards, evaluate=not args.no_eval)
        print(f"{args.out}: {len(manifest)} images merged from {len(args.shards) or 1} folder(s)")
        return 0

    return exit_status("asyndm-merge", merge, (AsyndmError, OSError, ValueError, KeyError))


if __name__ == "__main__":
    sys.exit(main())
