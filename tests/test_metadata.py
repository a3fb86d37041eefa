"""Reading outputs metadata: JSON lines, sidecars, version entries and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dspkg.errors import InvalidMetadata
from dspkg.metadata import read_outputs
from dspkg.names import VersionUri
from tests.helpers import write_outputs


def test_lines_and_sidecars_merge_into_versions(tmp_path: Path) -> None:
    out = write_outputs(
        tmp_path,
        {"a.txt": b"A", "b/c.txt": b"C", "d.txt": b"D"},
        per_file={
            "a.txt": ["dataset://ds/v1"],
            "b/c.txt": [
                {"uri": "dataset://ds/v1", "packaging": True, "targeting_aliases": ["prod"]}
            ],
        },
    )
    (out / "d.txt.metadata.json").write_text(
        json.dumps({"valohai.dataset-versions": [{"uri": "dataset://ds/v1"}, "dataset://other/x"]})
    )
    outputs = read_outputs(out)
    by_uri = {v.uri: v for v in outputs.versions}
    v1 = by_uri[VersionUri("ds", "v1")]
    assert tuple(v1.files) == ("a.txt", "b/c.txt", "d.txt")
    assert v1.packaging is True
    assert v1.aliases == ("prod",)
    assert tuple(by_uri[VersionUri("other", "x")].files) == ("d.txt",)
    assert outputs.files() == ["a.txt", "b/c.txt", "d.txt"]


def test_parent_exclude_and_start_fresh(tmp_path: Path) -> None:
    entry = {
        "uri": "dataset://ds/v2",
        "from": "dataset://ds/v1",
        "exclude": ["old.txt"],
        "start_fresh": True,
    }
    outputs = read_outputs(write_outputs(tmp_path, {"new.txt": b"N"}, [entry]))
    (v2,) = outputs.versions
    assert v2.parent == VersionUri("ds", "v1")
    assert v2.exclude == ("old.txt",)
    assert v2.start_fresh is True


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', 'expected {"file"'),
        ('{"file": "a.txt", "metadata": []}', "must be a JSON object"),
        ('{"file": "nope.txt", "metadata": {}}', "does not exist"),
        ('{"file": "/etc/passwd", "metadata": {}}', "absolute path"),
        (
            '{"file": "a.txt", "metadata": {"valohai.dataset-versions": "dataset://a/b"}}',
            "must be a list",
        ),
        (
            '{"file": "a.txt", "metadata": {"valohai.dataset-versions": [{"packaging": true}]}}',
            "'uri'",
        ),
        (
            '{"file": "a.txt", "metadata": {"valohai.dataset-versions": ["dataset://a/latest"]}}',
            "latest",
        ),
        (
            '{"file": "a.txt", "metadata": {"valohai.dataset-versions": '
            '[{"uri": "dataset://a/b", "from": "dataset://other/v"}]}}',
            "must be a version of dataset a",
        ),
        (
            '{"file": "a.txt", "metadata": {"valohai.dataset-versions": '
            '[{"uri": "dataset://a/b", "exclude": ["../x"]}]}}',
            "excluded path",
        ),
    ],
)
def test_errors_name_file_and_line(tmp_path: Path, line: str, needle: str) -> None:
    out = write_outputs(tmp_path, {"a.txt": b"A"}, ["dataset://a/b"])
    with (out / "valohai.metadata.jsonl").open("a") as f:
        f.write("\n" + line + "\n")
    with pytest.raises(InvalidMetadata, match=r"valohai\.metadata\.jsonl, line 3") as caught:
        read_outputs(out)
    assert caught.value.line == 3
    assert "valohai.metadata.jsonl, line 3" in str(caught.value)
    assert needle in str(caught.value)


def test_conflicting_parents_are_an_error(tmp_path: Path) -> None:
    out = write_outputs(
        tmp_path,
        {"a": b"1", "b": b"2"},
        per_file={
            "a": [{"uri": "dataset://d/v3", "from": "dataset://d/v1"}],
            "b": [{"uri": "dataset://d/v3", "from": "dataset://d/v2"}],
        },
    )
    with pytest.raises(InvalidMetadata, match="built from"):
        read_outputs(out)


def test_link_escaping_the_outputs_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s")
    out = write_outputs(tmp_path / "out", {"a": b"1"}, ["dataset://d/v"])
    (out / "link").symlink_to(tmp_path / "secret")
    with (out / "valohai.metadata.jsonl").open("a") as f:
        f.write(json.dumps({"file": "link", "metadata": {}}) + "\n")
    with pytest.raises(InvalidMetadata, match=r"'link' leads outside .* through a link"):
        read_outputs(out)


def test_bad_sidecar_names_the_sidecar(tmp_path: Path) -> None:
    out = write_outputs(tmp_path, {"a": b"1"}, ["dataset://d/v"])
    (out / "a.metadata.json").write_text("{oops")
    with pytest.raises(InvalidMetadata, match=r"a\.metadata\.json: not valid JSON"):
        read_outputs(out)
