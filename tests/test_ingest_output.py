"""Ingest output safety: --out checked writable first, runs staged beside OUT and swapped in
when complete, killed runs (an --overwrite included) resumed with --resume."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mars_jax.data.ingest import JOURNAL_FILE, SUMMARY_FILE, IngestUsageError, StrictStop, ingest
from mars_jax.data.ingest import main as ingest_main
from mars_jax.data.records import list_shards
from tests.test_ingest import read_all, synthetic_config, write_pair

ROOT = Path(__file__).resolve().parents[1]
SCENES = ("a", "b", "c", "d", "e")  # 32x32 each: 4 tiles of 16 -> 20 tiles, 7 shards of 3

# Runs the ingest CLI and dies, as under SIGKILL, when the shard writer is asked for its
# (LIMIT+1)-th tile: no shard closed, no summary, no clean-up.
KILLED_AT = """
import os, sys
from mars_jax.data import records
limit, count, write = int(sys.argv[1]), [0], records.ShardWriter.write
def dying_write(self, example):
    count[0] += 1
    if count[0] > limit:
        os._exit(137)
    write(self, example)
records.ShardWriter.write = dying_write
from mars_jax.data.ingest import main
sys.exit(main(sys.argv[2:]))
"""


def scenes(root: Path) -> None:
    for index, name in enumerate(SCENES):
        write_pair(root, name, sar=np.random.default_rng(index).uniform(
            -25, -5, (32, 32, 1)).astype(np.float32))


def cli_args(root: Path, out: Path, *extra: str, tile: int = 16) -> list[str]:
    return ["--optical", str(root / "opt"), "--sar", str(root / "sar"), "--out", str(out),
            "--tile", str(tile), "--overlap", "0", "--shard-size", "3", "--no-progress", *extra]


def killed_run(root: Path, out: Path, after_tiles: int, *extra: str):
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", KILLED_AT, str(after_tiles),
                           *cli_args(root, out, *extra)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)


def contents(out: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(out.iterdir())}


def comparable(summary_json: dict) -> dict:
    """A summary without what differs between two runs of the same ingest."""
    drop = {"seconds", "config"}
    return {key: value for key, value in summary_json.items() if key not in drop}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("whole")
    scenes(root)
    assert ingest_main(cli_args(root, root / "out")) == 0
    return root


def test_a_killed_run_resumes_to_the_uninterrupted_result(uninterrupted, tmp_path):
    scenes(tmp_path)
    out, partial = tmp_path / "out", tmp_path / "out.partial"
    assert killed_run(tmp_path, out, after_tiles=10).returncode == 137
    assert not out.exists()  # OUT appears only complete
    assert len(list_shards(partial)) == 3 and (partial / JOURNAL_FILE).exists()
    with pytest.raises(IngestUsageError, match=r"interrupted ingest \(3 finished shard\(s\)\): "
                                               r"pass --resume"):
        ingest(synthetic_config(tmp_path, shard_size=3))
    assert ingest_main(cli_args(tmp_path, out, "--resume")) == 0
    assert not partial.exists()
    whole = uninterrupted / "out"
    assert [p.name for p in list_shards(out)] == [p.name for p in list_shards(whole)]
    assert contents(out).keys() == contents(whole).keys()
    for mine, theirs in zip(read_all(out), read_all(whole), strict=True):
        assert mine.keys() == theirs.keys()
        for key in mine:
            np.testing.assert_array_equal(mine[key], theirs[key])
    assert comparable(json.loads((out / SUMMARY_FILE).read_text())) == comparable(
        json.loads((whole / SUMMARY_FILE).read_text()))


def test_resume_refuses_other_settings_and_a_missing_run(tmp_path):
    scenes(tmp_path)
    out = tmp_path / "out"
    assert killed_run(tmp_path, out, after_tiles=4).returncode == 137
    with pytest.raises(IngestUsageError, match=r"settings differ .* \(tile: 16 -> 8\)"):
        ingest(synthetic_config(tmp_path, tile=8, shard_size=3, resume=True))
    summary = ingest(synthetic_config(tmp_path, shard_size=3, resume=True))
    assert summary.tiles_written == 20 and len(read_all(out)) == 20
    with pytest.raises(IngestUsageError, match=r"no interrupted ingest to continue.*finished"):
        ingest(synthetic_config(tmp_path, shard_size=3, resume=True))


def test_a_killed_overwrite_leaves_the_previous_output_intact(tmp_path):
    scenes(tmp_path)
    out = tmp_path / "out"
    assert ingest_main(cli_args(tmp_path, out, tile=32)) == 0
    before = contents(out)
    assert json.loads(before[SUMMARY_FILE])["num_examples"] == 5
    assert killed_run(tmp_path, out, 7, "--overwrite").returncode == 137
    assert contents(out) == before  # the previous output, byte for byte
    assert ingest_main(cli_args(tmp_path, out, "--resume")) == 0  # continues the overwrite
    assert len(read_all(out)) == 20 and json.loads((out / SUMMARY_FILE).read_text())["tile"] == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["opt", "out", "sar"]  # nothing left


def test_resume_after_a_strict_stop_once_the_file_is_fixed(tmp_path):
    scenes(tmp_path)
    write_pair(tmp_path, "c", crs="EPSG:32632")  # c's SAR in another CRS
    with pytest.raises(StrictStop, match="crs_mismatch"):
        ingest(synthetic_config(tmp_path, shard_size=3, strict=True))
    write_pair(tmp_path, "c")  # fixed
    summary = ingest(synthetic_config(tmp_path, shard_size=3, strict=True, resume=True))
    assert summary.scenes_ok == 5 and summary.tiles_written == 20
    assert sorted({str(ex["id"]) for ex in read_all(tmp_path / "out")}) == list(SCENES)


def test_an_unwritable_out_fails_before_any_scene_is_read(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder would go")
    # The optical folder does not exist: the --out check comes first, before any input.
    config = synthetic_config(tmp_path, optical=tmp_path / "nowhere", out=blocker / "out")
    with pytest.raises(IngestUsageError, match=r"--out .*/file/out: .*/file is a file, not a "
                                               r"folder: choose a writable --out"):
        ingest(config)
    assert blocker.read_text() == "a file where a folder would go"
    with pytest.raises(SystemExit) as refused:
        ingest_main(["--optical", str(tmp_path / "opt"), "--sar", str(tmp_path / "sar"),
                     "--out", str(blocker / "out")])
    assert refused.value.code == 2 and "choose a writable --out" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_out_is_refused(tmp_path):
    scenes(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(IngestUsageError, match="Permission denied"):
            ingest(synthetic_config(tmp_path, out=locked / "out"))
    finally:
        locked.chmod(0o755)


def test_overwrite_refuses_a_folder_holding_other_files(tmp_path):
    scenes(tmp_path)
    ingest(synthetic_config(tmp_path))
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(IngestUsageError, match=r"not ingest output \(\['notes.txt'\]\)"):
        ingest(synthetic_config(tmp_path, overwrite=True))
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_a_fresh_run_into_an_existing_folder_keeps_its_other_files(tmp_path):
    scenes(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "README").write_text("dataset notes")
    ingest(synthetic_config(tmp_path))
    assert (tmp_path / "out" / "README").read_text() == "dataset notes"
    assert len(read_all(tmp_path / "out")) == 20
