"""Data preparation on Apache Beam (data_tools.beam_prepare): the local path's dataset, byte for byte,
and its atomicity. The Beam tests skip when apache_beam is not installed (the `beam` extra)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile
from absl import app, flags
from absl.testing import flagsaver

from amych_tf import data
from data_tools import conversion, prepare
from test_prepare import (  # noqa: F401 (sol_tree is a fixture)
    REPO, SMALL_FEATURES, directory_bytes, read_csv, run_prepare, sol_tree, write_bytes, write_tone,
)

try:
    import apache_beam
except ImportError:
    apache_beam = None
needs_beam = pytest.mark.skipif(apache_beam is None, reason="apache_beam is not installed (pip install -e '.[beam]')")

TRUNCATED_FILE = "Strings/Viola/ordinario/cut.wav"


def run_beam(audio_dir, out_dir, *pipeline_args, **kwargs):
    from data_tools import beam_prepare

    config = conversion.resolve_features("sol", **SMALL_FEATURES)
    return beam_prepare.prepare_dataset_with_beam(
        str(audio_dir), str(out_dir), layout="sol", features=config,
        pipeline_args=["--runner=DirectRunner", *pipeline_args], **kwargs,
    )


def info_without_beam_version(out_dir):
    """dataset_info.json, less the one field that differs: the Beam path also records its apache_beam version."""
    with open(os.path.join(out_dir, data.INFO_FILENAME), encoding="utf-8") as f:
        info = json.load(f)
    beam_version = info["versions"].pop("apache_beam", None)
    return info, beam_version


@needs_beam
def test_beam_cli_writes_the_local_paths_dataset_byte_for_byte(sol_tree, tmp_path):
    whole = open(os.path.join(sol_tree, "Strings/Viola/ordinario/note-0.wav"), "rb").read()
    write_bytes(os.path.join(sol_tree, TRUNCATED_FILE), whole[: len(whole) // 2])
    local = tmp_path / "local"
    run_prepare(sol_tree, local, shard_size=2)

    beam_out = tmp_path / "beam"
    flag_values = [f"--{name}={value}" for name, value in SMALL_FEATURES.items()]
    # Two threads, so the runner sees the files in another order than the plan's.
    result = subprocess.run(
        [sys.executable, "-m", "data_tools.prepare", "--layout=sol", f"--audio_dir={sol_tree}",
         f"--out_dir={beam_out}", "--shard_size=2", "--runner=DirectRunner", "--direct_num_workers=2",
         "--direct_running_mode=multi_threading", *flag_values],
        cwd=REPO, capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Prepared {beam_out}" in result.stdout and "skipped:  6 (" in result.stdout

    local_files, beam_files = directory_bytes(str(local)), directory_bytes(str(beam_out))
    local_info, _ = info_without_beam_version(str(local))
    beam_info, beam_version = info_without_beam_version(str(beam_out))
    assert beam_version == apache_beam.__version__
    assert beam_info == local_info
    assert sum(name.startswith("train-") for name in local_files) > 1  # several shards per split
    assert sorted(beam_files) == sorted(local_files)
    for name in local_files:  # every shard, manifest.csv and skipped.csv
        if name != data.INFO_FILENAME:
            assert beam_files[name] == local_files[name], name
    skipped = {row["path"]: row["reason"] for row in read_csv(beam_out / data.SKIPPED_FILENAME)}
    assert skipped[TRUNCATED_FILE].startswith("truncated: data chunk of ")
    assert skipped["PluckedStrings/Guitar/ordinario/corrupt.flac"].startswith("not readable audio: ")


@needs_beam
def test_failed_beam_runs_leave_the_earlier_dataset_whole_and_no_staging(sol_tree, tmp_path, monkeypatch):
    out = tmp_path / "out"
    run_prepare(sol_tree, out, shard_size=2)
    before = directory_bytes(str(out))

    # A worker that fails: the runner's error, nothing written, the staging directory gone.
    encode = conversion.ClipEncoder.__call__

    def fail_on_viola(self, clip, loaded):
        if clip.class_name == "Strings/Viola":
            raise RuntimeError("worker failed")
        return encode(self, clip, loaded)

    monkeypatch.setattr(conversion.ClipEncoder, "__call__", fail_on_viola)
    with pytest.raises(Exception, match="worker failed"):
        run_beam(sol_tree, out, shard_size=2)
    assert directory_bytes(str(out)) == before
    with pytest.raises(Exception, match="worker failed"):
        run_beam(sol_tree, tmp_path / "new")
    assert not (tmp_path / "new").exists()
    monkeypatch.undo()

    # A class left without usable audio, found after the pipeline wrote its shards: the same
    # error as the local path, and the staged shards are deleted.
    viola = os.path.join(sol_tree, "Strings/Viola")
    for folder, _, names in os.walk(viola):
        for name in names:
            soundfile.write(os.path.join(folder, name), np.zeros(100), 16000, format="WAV")
    with pytest.raises(conversion.EmptyClassError, match=r"'Strings/Viola' \(all \d+ skipped: silent"):
        run_beam(sol_tree, out, shard_size=2)
    assert directory_bytes(str(out)) == before


def test_a_killed_runs_staging_directory_is_removed_by_the_next_run(tmp_path):
    """A Beam run killed mid-way leaves its staging directory (named after its process id) behind."""
    audio_dir = tmp_path / "audio"
    for take in range(3):
        write_tone(str(audio_dir / "reed" / f"note-{take}.wav"), 200.0 + 10 * take)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    staging = tmp_path / "out" / f"{conversion.STAGING_DIR_PREFIX}{int(dead.stdout)}"
    write_bytes(str(staging / "train-00000.tfrecord.partial-0"), b"half a shard")
    live = tmp_path / "out" / f"{conversion.STAGING_DIR_PREFIX}{os.getpid()}"  # a running writer's: kept
    live.mkdir()
    run_prepare(audio_dir, tmp_path / "out", layout="folders")
    assert not staging.exists() and live.exists()
    data.DatasetInfo.load(str(tmp_path / "out"))


def test_unknown_flags_go_to_beam_with_a_runner_and_are_errors_without(tmp_path):
    prepare.define_flags()
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        argv = prepare.parse_flags(
            ["prepare", "--layout=sol", f"--audio_dir={tmp_path}", f"--out_dir={tmp_path / 'o'}", "--project", "p",
             "--shard_size=7"]
        )
        assert argv == ["prepare", "--project", "p"] and flags.FLAGS.shard_size == 7
        with pytest.raises(app.UsageError, match="unexpected arguments: --project p"):
            prepare.main(argv)


def parse_and_run(tmp_path, *extra):
    """prepare's command line, parsed as `run` parses it, then `main`; returns main's status."""
    prepare.define_flags()
    argv = prepare.parse_flags(
        ["prepare", "--layout=folders", f"--audio_dir={tmp_path}", f"--out_dir={tmp_path / 'o'}", *extra]
    )
    return prepare.main(argv)


@needs_beam
def test_runner_flags_reach_beam_with_num_workers(tmp_path, monkeypatch):
    from data_tools import beam_prepare

    calls = []
    monkeypatch.setattr(beam_prepare, "prepare_dataset_with_beam", lambda *args, **kwargs: calls.append(kwargs))
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        assert parse_and_run(tmp_path, "--runner=DataflowRunner", "--project=p", "--num_workers=3") == 0
    assert calls[0]["pipeline_args"] == ["--runner=DataflowRunner", "--project=p", "--num_workers=3"]
    assert calls[0]["layout"] == "folders" and "num_workers" not in calls[0]


@pytest.mark.skipif(apache_beam is not None, reason="apache_beam is installed: the missing-Beam error cannot show")
def test_runner_without_beam_installed_is_a_one_line_error(tmp_path, capsys):
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        assert parse_and_run(tmp_path, "--runner=DirectRunner") == 1
    assert capsys.readouterr().err == (
        "error: --runner needs Apache Beam (No module named 'apache_beam'): pip install -e '.[beam]'\n"
    )


@needs_beam
def test_beam_stores_the_same_waveforms_as_the_local_path(tmp_path):
    from data_tools import beam_prepare

    audio_dir = tmp_path / "audio"
    for label, name in enumerate(("reed", "bell")):
        for take in range(4):
            write_tone(str(audio_dir / name / f"note-{take}.wav"), 200.0 * (label + 1) + 15 * take, seconds=0.3)
    config = conversion.resolve_features("folders", **SMALL_FEATURES)
    waveform = {"sample_rate": 4000, "num_samples": 512}
    conversion.prepare_dataset(str(audio_dir), str(tmp_path / "local"), layout="folders", features=config,
                               waveform=waveform)
    beam_prepare.prepare_dataset_with_beam(str(audio_dir), str(tmp_path / "beam"), layout="folders", features=config,
                                           waveform=waveform)
    local, beam = directory_bytes(str(tmp_path / "local")), directory_bytes(str(tmp_path / "beam"))
    assert data.DatasetInfo.load(str(tmp_path / "beam")).waveform == waveform
    assert info_without_beam_version(str(tmp_path / "beam"))[0] == info_without_beam_version(str(tmp_path / "local"))[0]
    assert {name: local[name] for name in local if name != data.INFO_FILENAME} == {
        name: beam[name] for name in beam if name != data.INFO_FILENAME}
