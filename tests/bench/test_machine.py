"""The machine description a benchmark run records: the work dir's file system."""

from __future__ import annotations

from pathlib import Path

import pytest

from dspkg.bench.machine import _file_system, describe, ext4_journal, file_system_label, summary


def _sysfs(root: Path, device: str, journal_task: str) -> Path:
    folder = root / device
    folder.mkdir(parents=True)
    (folder / "journal_task").write_text(journal_task + "\n")
    return root


@pytest.mark.parametrize(
    ("task", "expected"), [("<none>", False), ("jbd2/vda-8", True), ("123", True)]
)
def test_ext4_journal_reads_the_journal_task(tmp_path: Path, task: str, expected: bool) -> None:
    sysfs = _sysfs(tmp_path, "vda", task)
    assert ext4_journal("/dev/vda", sysfs) is expected


def test_ext4_journal_is_unknown_without_a_device_or_its_sysfs_folder(tmp_path: Path) -> None:
    sysfs = _sysfs(tmp_path, "vda", "<none>")
    assert ext4_journal(None, sysfs) is None
    assert ext4_journal("/dev/vdb", sysfs) is None


@pytest.mark.parametrize(
    ("journal", "label"), [(False, "ext4 (no journal)"), (True, "ext4 (journal)"), (None, "ext4")]
)
def test_the_label_says_whether_ext4_has_a_journal(journal: bool | None, label: str) -> None:
    machine = {"file_system": "ext4", "file_system_journal": journal}
    assert file_system_label(machine) == label


def test_describe_records_the_journal_of_this_machine_s_work_dir(tmp_path: Path) -> None:
    machine = describe(tmp_path)
    fs_type, device, _ = _file_system(tmp_path)
    if fs_type == "ext4":
        assert machine["file_system_journal"] == ext4_journal(device)
    else:
        assert machine["file_system_journal"] is None
    assert file_system_label(machine) in summary(machine)[1]
