"""Fault injection: bad audio files, processes killed mid-way (SIGKILL), and what survives them.

Inconsistent training flags, bad serving requests and non-finite training data are in
test_train.py and test_export.py; README's "Failure behaviour" lists every fault.
"""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile

from amych_tf import data
from test_prepare import REPO, SMALL_FEATURES, directory_bytes, read_csv, run_prepare, write_bytes, write_tone

SOURCE_RATE = 16000


@pytest.fixture
def folders_tree(tmp_path):
    """Two classes of 6 good tones each (folders layout)."""
    root = tmp_path / "audio"
    for label, name in enumerate(("reed", "bell")):
        for take in range(6):
            write_tone(str(root / name / f"note-{take}.wav"), 200.0 * (label + 1) + 15 * take, seconds=0.3)
    return root


def test_each_bad_file_is_skipped_with_its_reason_and_the_rest_converted(folders_tree, tmp_path):
    """The kinds test_prepare.py does not already feed (text, empty, silent, corrupt FLAC, dangling link there)."""
    reed = folders_tree / "reed"
    tone = np.asarray(soundfile.read(str(reed / "note-0.wav"), dtype="float32")[0])
    whole = (reed / "note-0.wav").read_bytes()
    write_bytes(str(reed / "cut.wav"), whole[: len(whole) // 2])  # a copy cut short: libsndfile would read half
    soundfile.write(str(reed / "nan.wav"), np.where(np.arange(len(tone)) == 7, np.nan, tone), SOURCE_RATE,
                    subtype="FLOAT")
    soundfile.write(str(reed / "inf.wav"), np.where(np.arange(len(tone)) == 7, np.inf, tone), SOURCE_RATE,
                    subtype="FLOAT")
    os.mkfifo(reed / "pipe.wav")  # opening it would wait for a writer forever
    write_tone(str(reed / "inside.wav" / "note.wav"), 330.0)  # a directory named like a file: searched
    os.makedirs(reed / "empty.wav")
    write_tone(str(reed / "stereo-44k.wav"), 300.0, seconds=0.5, sample_rate=44100, channels=2)
    write_tone(str(reed / "short.wav"), 500.0, seconds=0.01)

    run_prepare(str(folders_tree), tmp_path / "out", layout="folders")

    skipped = {row["path"]: row["reason"] for row in read_csv(tmp_path / "out" / data.SKIPPED_FILENAME)}
    assert skipped == {
        "reed/cut.wav": f"truncated: data chunk of {2 * len(tone)} bytes declared, {len(whole) // 2 - 44} present",
        "reed/inf.wav": "non-finite samples: NaN or infinity in the audio",
        "reed/nan.wav": "non-finite samples: NaN or infinity in the audio",
        "reed/pipe.wav": "not a regular file: a named pipe",
    }
    frames = {row["path"]: int(row["num_frames"]) for row in read_csv(tmp_path / "out" / data.MANIFEST_FILENAME)}
    assert len(frames) == 12 + 3
    assert frames["reed/short.wav"] == data.MIN_FRAMES  # 0.01 s: tiled to the minimum clip
    assert frames["reed/stereo-44k.wav"] == 30  # mixed to mono, 0.5 s resampled to 8 kHz
    assert "reed/inside.wav/note.wav" in frames


# Runs data_tools.prepare's command line and kills itself with SIGKILL at a chosen point:
# "convert" at the 5th example encoded, "commit" after the 2nd shard has its final name.
KILLED_PREPARE = textwrap.dedent("""
    import os, signal, sys
    from amych_tf import data
    from data_tools import conversion, prepare

    where, argv = sys.argv[1], sys.argv[2:]
    calls = []

    def die_at(count):
        calls.append(1)
        if len(calls) == count:
            os.kill(os.getpid(), signal.SIGKILL)

    encode_example, replace = data.encode_example, os.replace
    if where == "convert":
        data.encode_example = lambda *args, **kwargs: die_at(5) or encode_example(*args, **kwargs)
    else:
        def replace_then_die(source, target):
            replace(source, target)
            if target.endswith(".tfrecord"):
                die_at(2)
        conversion.os.replace = replace_then_die
    sys.argv = ["prepare", *argv]
    prepare.run()
""")


def prepare_and_kill(where, audio_dir, out_dir):
    flag_values = [f"--{name}={value}" for name, value in SMALL_FEATURES.items()]
    return subprocess.run(
        [sys.executable, "-c", KILLED_PREPARE, where, "--layout=folders", f"--audio_dir={audio_dir}",
         f"--out_dir={out_dir}", "--shard_size=2", "--num_workers=1", "--noprogress", *flag_values],
        cwd=REPO, capture_output=True, text=True, timeout=120)


def test_prepare_killed_midway_leaves_no_partial_dataset_and_a_rerun_equals_an_uninterrupted_run(
        folders_tree, tmp_path):
    reference = tmp_path / "reference"
    run_prepare(str(folders_tree), reference, layout="folders", shard_size=2)

    # Killed while converting into a new directory: temp shards only, no dataset.
    out = tmp_path / "out"
    killed = prepare_and_kill("convert", folders_tree, out)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    names = os.listdir(out)
    assert names and all(".tfrecord.tmp-" in name for name in names), names
    run_prepare(str(folders_tree), out, layout="folders", shard_size=2)
    assert directory_bytes(str(out)) == directory_bytes(str(reference))  # record for record, byte for byte

    # Killed while renaming the shards of a new run over an earlier dataset (one file fewer there):
    # no dataset_info.json, so no reader takes the mixture of shards for a dataset.
    os.rename(folders_tree / "bell" / "note-5.wav", tmp_path / "aside.wav")
    earlier = tmp_path / "earlier"
    run_prepare(str(folders_tree), earlier, layout="folders", shard_size=2)
    os.rename(tmp_path / "aside.wav", folders_tree / "bell" / "note-5.wav")
    killed = prepare_and_kill("commit", folders_tree, earlier)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    with pytest.raises(FileNotFoundError, match="dataset_info.json is missing"):
        data.load_dataset_info(str(earlier))
    run_prepare(str(folders_tree), earlier, layout="folders", shard_size=2)
    assert directory_bytes(str(earlier)) == directory_bytes(str(reference))
