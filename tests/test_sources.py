"""kwyn.sources: the fingerprint a group of stages depends on instead of each kwyn module."""
import hashlib
import json

import pytest
import yaml
from conftest import ROOT
from kwyn.sources import files_of, fingerprint, stage_sources, write_fingerprint


def _project(tmp_path, deps):
    (tmp_path / "params.yaml").write_text("{}\n")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"sources_x": {
        "cmd": "python -m kwyn.sources sources_x", "deps": deps, "outs": ["fingerprints/x.json"]}}}))
    (tmp_path / "pkg" / "sub" / "__pycache__").mkdir(parents=True)
    (tmp_path / "pkg" / "a.py").write_text("a = 1\n")
    (tmp_path / "pkg" / "b.py").write_text("b = 1\n")
    (tmp_path / "pkg" / "sub" / "c.py").write_text("c = 1\n")
    (tmp_path / "pkg" / "sub" / "__pycache__" / "c.cpython-311.pyc").write_bytes(b"\0")
    return tmp_path


def test_a_folder_stands_for_its_files_without_bytecode(tmp_path):
    root = _project(tmp_path, [])
    assert files_of(["pkg/sub", "pkg/a.py"], root) == ["pkg/a.py", "pkg/sub/c.py"]


def test_the_fingerprint_changes_with_a_listed_file_and_only_with_one(tmp_path):
    root = _project(tmp_path, ["pkg/a.py", "pkg/sub"])
    before = (write_fingerprint("sources_x", root)).read_text()
    assert json.loads(before) == {"stage": "sources_x", "files": {
        "pkg/a.py": hashlib.md5(b"a = 1\n").hexdigest(), "pkg/sub/c.py": hashlib.md5(b"c = 1\n").hexdigest()}}
    assert fingerprint(["pkg/a.py", "pkg/sub"], root) == json.loads(before)["files"]
    (root / "pkg" / "b.py").write_text("b = 2\n")           # not listed
    (root / "pkg" / "sub" / "__pycache__" / "c.cpython-311.pyc").write_bytes(b"\1")
    assert write_fingerprint("sources_x", root).read_text() == before
    (root / "pkg" / "sub" / "c.py").write_text("c = 2\n")   # listed, through its folder
    assert write_fingerprint("sources_x", root).read_text() != before


def test_a_missing_source_or_stage_is_named(tmp_path):
    root = _project(tmp_path, ["pkg/gone.py"])
    with pytest.raises(FileNotFoundError, match="gone.py"):
        write_fingerprint("sources_x", root)
    with pytest.raises(KeyError, match="sources_y"):
        stage_sources("sources_y", root / "dvc.yaml")


def test_the_train_and_trim_stages_depend_on_their_groups_fingerprint():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage, group in [("train", "train"), ("train_scratch", "train"), ("trim", "trim"), ("trim_scratch", "trim")]:
        deps = stages[stage]["do"]["deps"]
        assert f"fingerprints/{group}.json" in deps and not any(d.startswith("kwyn") for d in deps), stage
        assert stage_sources(f"sources_{group}", ROOT / "dvc.yaml")[1] == f"fingerprints/{group}.json"
