"""The run-folder schema's writes (asyndm/run_folder.py): atomic, and readable as the umask allows."""

import os
import stat

import pandas as pd
import pytest

from asyndm.errors import RunFolderError
from asyndm.run_folder import atomic_write_bytes, atomic_write_json, atomic_write_text, write_table


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        atomic_write_text(tmp_path / "b.txt", "y")
        write_table(tmp_path / "c.csv", pd.DataFrame({"v": [1]}))
        atomic_write_json(tmp_path / "d.json", {"v": 1})
    finally:
        os.umask(old)
    for name in ("a.bin", "b.txt", "c.csv", "d.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
    assert os.umask(old) == old  # the process's umask is left as it was
    os.umask(old)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    """A full disk shows up when the bytes are flushed: the target keeps its old bytes."""
    target = tmp_path / "t.csv"
    atomic_write_text(target, "old")

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(RunFolderError, match="No space left on device; free some space on that disk"):
        atomic_write_text(target, "new")  # one line saying what to do (asyndm/errors.py)
    monkeypatch.undo()
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["t.csv"]
