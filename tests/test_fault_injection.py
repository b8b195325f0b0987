"""Fault injection: damage a finished run, or make a run fail part-way (SIGKILL, a wandb outage, a full
disk), then run the same command again. Each test ends with every file byte-identical to an undamaged
run's, or with a one-line refusal that changed nothing.

The undamaged run is sampled once (in this process, toy-sized); each test damages a copy of it.
"""

import errno
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from asyndm.config import CONF_DIR, register_resolvers
from asyndm.errors import RunFolderError
from asyndm.run import run

# 2 prompts × 1 image, every variant, latents and masks saved, scored one image at a time (so that
# results.csv is written after each image): 6 images.
OVERRIDES = ["model=tiny", "prompts.limit=2", "sample.images_per_prompt=1", "sample.batch_size=1", "sample.steps=3",
             "save.latents=true", "save.masks=true", "eval=[clip_tiny]", "eval.clip.batch_size=1",
             "device=cpu", "progress=false"]
# Files that say how a command went, not what it made (each run rewrites or adds to them), and what
# the CLI (not an in-process run) adds: Hydra's record and the log.
PER_INVOCATION = {"status.json", "history.jsonl", "asyndm.log"}


def config(run_dir: Path, *extra: str):
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=[*OVERRIDES, *extra, f"run_dir={run_dir}"])


def digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file the run made, by name (PER_INVOCATION, .hydra/ and wandb/ left out), with
    the folder's own path (in config.yaml) read as "RUN"."""
    return {name: hashlib.sha256(p.read_bytes().replace(str(folder).encode(), b"RUN")).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()
            and (name := str(p.relative_to(folder))) not in PER_INVOCATION and not name.startswith((".hydra/", "wandb/"))}


@pytest.fixture(scope="module")
def undamaged(tmp_path_factory):
    folder = tmp_path_factory.mktemp("undamaged") / "run"
    run(config(folder), folder)
    return folder, digests(folder)


@pytest.fixture
def copy(undamaged, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(undamaged[0], folder)
    return folder


def assert_as_undamaged(folder: Path, undamaged, but: tuple[str, ...] = ()) -> None:
    now, then = digests(folder), undamaged[1]
    now, then = ({k: v for k, v in d.items() if k not in but} for d in (now, then))
    assert sorted(now) == sorted(then), f"files added {set(now) - set(then)}, lost {set(then) - set(now)}"
    differ = [name for name in then if now[name] != then[name]]
    assert not differ, f"not byte-identical to the undamaged run: {differ}"


# --- damaged files of a finished run --------------------------------------------------------------


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_changed_number_in_a_latent_decodes_but_fails_its_checksum_and_is_sampled_again(copy, undamaged):
    latent = copy / "latents/00001_dm.npy"
    flip_last_byte(latent)
    np.load(latent)  # still a valid .npy: only the manifest's checksum tells it from the one written
    run(config(copy), copy)
    assert_as_undamaged(copy, undamaged)


@pytest.mark.parametrize("name", ["masks/00000_asyndm.png", "latents/00000_asyndm.npy", "images/00001_dm_concave.png"])
def test_a_file_of_the_same_size_with_other_bytes_is_sampled_again(copy, undamaged, name):
    path = copy / name
    path.write_bytes(b"\0" * path.stat().st_size)
    run(config(copy), copy)
    assert_as_undamaged(copy, undamaged)


def test_a_folder_written_before_the_manifest_recorded_checksums_resumes_by_decoding(copy, undamaged):
    manifest = pd.read_csv(copy / "manifest.csv")
    manifest.iloc[:, :10].to_csv(copy / "manifest.csv", index=False)  # an older asyndm's columns
    (copy / "latents/00000_dm.npy").write_bytes(b"\x93NUMPY")  # truncated: a decode finds it
    run(config(copy), copy)
    assert_as_undamaged(copy, undamaged)  # and the manifest has its checksums again


def cut_mid_row(path: Path) -> None:
    text = path.read_bytes()
    path.write_bytes(text[: text.rstrip(b"\n").rfind(b"\n") + 6])  # the header and rows, then 5 bytes of the last


@pytest.mark.parametrize("table", ["timesteps.csv", "summary.csv", "results.csv", "manifest.csv"])
@pytest.mark.parametrize("damage", ["cut mid-row", "garbage"])
def test_a_damaged_table_is_rebuilt_from_what_is_verified(copy, undamaged, table, damage, caplog):
    path = copy / table
    if damage == "cut mid-row":
        cut_mid_row(path)
    else:
        path.write_bytes(b"\x89\xff\x00 not a table\n" + os.urandom(64))
    with caplog.at_level(logging.WARNING):
        run(config(copy), copy)
    assert_as_undamaged(copy, undamaged)


def test_result_rows_that_match_no_image_of_the_manifest_are_scored_again_not_summarised(copy, undamaged):
    results = (copy / "results.csv").read_text().splitlines(keepends=True)
    header, rows = results[0], results[1:]
    fields = rows[2].split(",")
    fields[4] = "999"  # a seed the image was not sampled with
    forged = ",".join(fields)
    (copy / "results.csv").write_text(header + "".join(rows[:2]) + forged + "".join(rows[3:])
                                      + "7,7,no such prompt,,1,dm,clip/cosine_raw,0.5\n")
    run(config(copy), copy)
    assert_as_undamaged(copy, undamaged)


# --- runs that fail part-way ------------------------------------------------------------------------


def killed_command(run_dir: Path, target: str, nth: int, kill: bool = True) -> subprocess.CompletedProcess:
    """`asyndm` with the run's settings, SIGKILLed right after its ``nth`` atomic write of ``target``
    (a file name) lands, or, with ``kill=False``, with that write failing as on a full disk."""
    driver = textwrap.dedent(f"""
        import errno, os, signal, sys
        from pathlib import Path
        real_replace, count = os.replace, [0]
        def replace(src, dst, *args, **kwargs):
            if Path(dst).name == {target!r}:
                count[0] += 1
                if count[0] == {nth} and not {kill!r}:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_replace(src, dst, *args, **kwargs)
            if Path(dst).name == {target!r} and count[0] == {nth} and {kill!r}:
                os.kill(os.getpid(), signal.SIGKILL)
        os.replace = replace
        sys.argv = ["asyndm", *sys.argv[1:]]
        from asyndm.cli import main
        main()
    """)
    # One thread, as this process (tests/conftest.py): CPU kernels add in another order on more threads.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "offline",
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", driver, *OVERRIDES, f"run_dir={run_dir}"], cwd=run_dir.parent,
                          env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("target, nth", [("00001_asyndm.npy", 1), ("timesteps.csv", 1), ("results.csv", 3)],
                         ids=["sampling: a latent written, not yet its image",
                              "sampling: a batch written and traced, not yet in the manifest",
                              "scoring: after its third image"])
def test_a_run_killed_part_way_completes_byte_identical_on_rerun(undamaged, tmp_path, target, nth):
    folder = tmp_path / "run"
    killed = killed_command(folder, target, nth)
    assert killed.returncode == -9, killed.stderr[-2000:]
    run(config(folder), folder)
    assert_as_undamaged(folder, undamaged)


def test_a_full_disk_is_one_line_leaves_no_partial_file_and_the_rerun_completes(undamaged, tmp_path):
    folder = tmp_path / "run"
    failed = killed_command(folder, "00001_dm.png", 1, kill=False)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr, failed.stderr[-2000:]
    error = failed.stderr.strip().splitlines()[-1]
    assert error.startswith(f"asyndm: error: cannot write {folder / 'images/00001_dm.png'}: No space left on device")
    assert "rerun the same command" in error
    assert not (folder / "images/00001_dm.png").exists()
    assert not [p for p in folder.rglob(".*") if p.is_file() and ".hydra" not in p.parts]  # no temporary file left
    run(config(folder), folder)
    assert_as_undamaged(folder, undamaged)


def test_a_full_disk_in_process_raises_one_line_and_the_status_records_it(copy, monkeypatch):
    """In process too, a failing write is a RunFolderError (an AsyndmError: the CLI prints one line)."""
    (copy / "images/00000_dm.png").unlink()
    real_fsync = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1].startswith(".00000_dm.png."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(RunFolderError, match=r"cannot write .*00000_dm.png: No space left on device; free some space"):
        run(config(copy), copy)
    assert not list((copy / "images").glob(".00000_dm.png.*")) and not (copy / "images/00000_dm.png").exists()
    assert '"status": "failed"' in (copy / "status.json").read_text()


# config.yaml records logger=wandb; the logger draws the timestep figure it uploads.
WANDB_FILES = ("config.yaml", "report/timesteps.png")


def test_a_wandb_outage_mid_run_loses_nothing_and_a_rerun_logs(copy, undamaged, monkeypatch):
    import wandb

    (copy / "images/00000_dm.png").unlink()  # the rerun samples one image, scores it, then logs
    calls = []

    def down(*args, **kwargs):
        calls.append(args)
        raise wandb.errors.CommError("could not reach https://api.wandb.ai: connection refused")

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", down)  # the run starts; its first log fails
    with pytest.warns(UserWarning, match="wandb logging of .* failed .*CommError"):
        run(config(copy, "logger=wandb"), copy)
    assert calls and '"status": "completed"' in (copy / "status.json").read_text()
    assert_as_undamaged(copy, undamaged, but=WANDB_FILES)

    monkeypatch.undo()
    run(config(copy, "logger=wandb"), copy)
    assert_as_undamaged(copy, undamaged, but=WANDB_FILES)
    logged = list((copy / "wandb").glob("offline-run-*/run-*.wandb"))
    assert logged, "the rerun logged nothing"


# --- bad input to the other console scripts: one line, exit status 2, a traceback only under --debug


def one_line_exit(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exited:
        code = main(argv)
        raise SystemExit(code)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def damaged_copy(folder: Path, name: str, data: bytes) -> Path:
    (folder / name).write_bytes(data)
    return folder


@pytest.mark.parametrize("case", ["missing folder", "a file", "damaged config.yaml", "config.yaml not a mapping",
                                  "no manifest", "damaged manifest", "damaged results for the report"])
def test_asyndm_eval_refuses_bad_input_in_one_line(copy, tmp_path, capsys, case):
    from evaluation.cli import main

    target = {
        "missing folder": lambda: tmp_path / "nowhere",
        "a file": lambda: damaged_copy(tmp_path, "notes.txt", b"mine") / "notes.txt",
        "damaged config.yaml": lambda: damaged_copy(copy, "config.yaml", b"model: {name: [tiny\n"),
        "config.yaml not a mapping": lambda: damaged_copy(copy, "config.yaml", b"- 1\n- 2\n"),
        "no manifest": lambda: (copy / "manifest.csv").unlink() or copy,
        "damaged manifest": lambda: damaged_copy(copy, "manifest.csv", b"\x89\xff\x00garbage"),
        "damaged results for the report": lambda: damaged_copy(copy, "manifest.csv", b"image_idx,variant\n0,dm\n"),
    }[case]()
    line = one_line_exit(main, [str(target), "eval=[clip_tiny]"], capsys)
    assert line.startswith("asyndm-eval: error: ") and len(line) < 400, line


def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    from evaluation.cli import main

    monkeypatch.setenv("ASYNDM_DEBUG", "0")  # restored after the test: --debug sets it to 1
    (tmp_path / "config.yaml").write_bytes(b"model: {name: [tiny\n")
    with pytest.raises(Exception) as raised:  # the error itself, for its traceback
        main([str(tmp_path), "--debug"])
    assert not isinstance(raised.value, SystemExit)
    assert os.environ["ASYNDM_DEBUG"] == "1"


@pytest.mark.parametrize("case", ["missing folder", "a file as the output", "damaged config.yaml",
                                  "not sharded", "shards of other runs", "a damaged image in a shard"])
def test_asyndm_merge_refuses_bad_input_in_one_line(undamaged, tmp_path, capsys, case):
    from asyndm.shard import main

    shard = tmp_path / "shard"
    shutil.copytree(undamaged[0], shard)
    (shard / "manifest.csv").rename(shard / "manifest.shard-0-of-1.csv")
    out = str(tmp_path / "out")
    if case == "missing folder":
        argv = [out, str(tmp_path / "nowhere")]
    elif case == "a file as the output":
        argv = [str(damaged_copy(tmp_path, "out.txt", b"mine") / "out.txt"), str(shard)]
    elif case == "damaged config.yaml":
        argv = [out, str(damaged_copy(shard, "config.yaml", b"\x00\xff"))]
    elif case == "not sharded":
        (shard / "manifest.shard-0-of-1.csv").unlink()
        argv = [out, str(shard)]
    elif case == "shards of other runs":
        other = tmp_path / "other"
        shutil.copytree(shard, other)
        damaged_copy(other, "config.yaml", (shard / "config.yaml").read_bytes().replace(b"config_hash: ", b"config_hash: 0"))
        argv = [out, str(shard), str(other)]
    else:
        damaged_copy(shard, "images/00001_dm.png", b"\0" * 100)
        argv = [out, str(shard), "--no-eval"]
    line = one_line_exit(main, argv, capsys)
    assert line.startswith("asyndm-merge: error: ") and len(line) < 500, line
    if case == "a damaged image in a shard":
        assert "images/00001_dm.png" in line and "damaged" in line


def test_a_read_only_run_dir_is_refused_in_one_line_before_anything_loads(tmp_path, capsys, monkeypatch):
    """Where the folder cannot be written (os.access says so: as root, chmod would not stop a write,
    so the test asks the same question the check does)."""
    from asyndm import cli as asyndm_cli

    read_only = tmp_path / "shared"
    read_only.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) == read_only
                        else real_access(path, mode, **kw))
    monkeypatch.setattr(sys, "argv", ["asyndm", *OVERRIDES, f"run_dir={read_only / 'run'}"])
    with pytest.raises(SystemExit) as exited:
        asyndm_cli.main()
    err = capsys.readouterr().err.strip()
    assert exited.value.code == 2 and err.count("\n") == 0, err
    assert err == f"asyndm: error: run_dir={read_only / 'run'}: {read_only} is not writable; choose a folder you " \
                  f"can write to (run_dir=...)"
    assert list(read_only.iterdir()) == []


def test_asyndm_report_refuses_a_damaged_run_in_one_line_and_debug_shows_why(copy, capsys, monkeypatch):
    from evaluation.report import main

    monkeypatch.setenv("ASYNDM_DEBUG", "0")
    (copy / "results.csv").write_bytes((copy / "results.csv").read_bytes().replace(b"clip/cosine_raw,", b"clip/cosine_raw,x", 1))
    line = one_line_exit(main, [str(copy)], capsys)
    assert line.startswith("asyndm-report: error: ") and "rerun the asyndm command that made the run" in line
    with pytest.raises(ValueError):
        main([str(copy), "--debug"])


def test_a_prompt_over_the_token_limit_whose_items_fit_is_refused_naming_its_line(tmp_path):
    """The words past the text encoder's limit would be cut off without a word said; refused before
    any weights load (only the tokenizer is read), naming the file and line and the limit."""
    from asyndm.errors import PromptError

    prompts = tmp_path / "long.jsonl"
    long = "a cat " + "and a very long description " * 20
    prompts.write_text('{"prompt": "a cat", "items": ["cat"], "k": 0.5}\n\n'
                       + f'{{"prompt": "{long}", "items": ["cat"], "k": 0.5}}\n')
    folder = tmp_path / "run"
    with pytest.raises(PromptError, match=rf"^{prompts}:3: prompt 'a cat and a very long.*' is \d+ tokens, more than "
                                          r"the 77 the text encoder reads .*shorten it$"):
        run(config(folder, "prompts=custom", f"prompts.file={prompts}", "prompts.limit=null"), folder)
    assert not (folder / "images").exists()


def test_a_damaged_config_yaml_is_rewritten_when_the_manifest_shows_the_same_run(copy, undamaged):
    (copy / "config.yaml").write_bytes(b"model: {name: [tiny\n")
    run(config(copy), copy)
    assert_as_undamaged(copy, undamaged)


def test_a_damaged_config_yaml_with_other_settings_is_refused_and_nothing_changes(copy):
    from asyndm.errors import ConfigError

    from asyndm.resume import preflight

    (copy / "config.yaml").write_bytes(b"\x00\xff")
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match=r"its config.yaml is damaged .* does not show that it holds this run"):
        preflight(config(copy, "sample.steps=4"), copy)  # the checks `asyndm` makes before writing anything
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before


def test_a_trace_cut_inside_the_only_image_of_its_variant_is_traced_again(tmp_path):
    """Where the last image of the table is its variant's only one, its step count cannot be compared
    with another image's: the cut itself marks it."""
    from asyndm.run import complete_traces, read_trace

    path = tmp_path / "timesteps.csv"
    path.write_text("image_idx,variant,step,item_mean,background_mean\n"
                    "0,asyndm,0,900.0,900.0\n0,asyndm,1,500.0,500.0\n0,dm,0,900.0,900.0\n0,dm,1,50")
    assert complete_traces(read_trace(tmp_path, path, 1)) == {(0, "asyndm")}
    path.write_text("image_idx,variant,step,item_mean,background_mean\n0,dm,0,900.0,900.0\n0,dm,1,500.0,500.0\n")
    assert complete_traces(read_trace(tmp_path, path, 1)) == {(0, "dm")}
    assert complete_traces(read_trace(tmp_path, tmp_path / "absent.csv", 1)) is None  # no table: nothing to rebuild
