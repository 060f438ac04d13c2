"""Fault injection: bad audio files, processes killed mid-way (SIGKILL), and what survives them.

Inconsistent training flags, bad serving requests and non-finite training data are in
test_train.py and test_export.py; README's "Failure behaviour" lists every fault.
"""

import json
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


# Runs amych_tf.train's command line and kills itself with SIGKILL: "epoch" in the middle of
# the third epoch (after its 2nd batch), "metrics" when metrics.json is about to get its name.
KILLED_TRAINING = textwrap.dedent("""
    import os, signal, sys
    from amych_tf import evaluation
    from amych_tf.cli import train
    from amych_tf.training import callbacks

    where, argv = sys.argv[1], sys.argv[2:]
    if where == "epoch":
        guard = callbacks.NonFiniteGuard.on_train_batch_end

        def guard_then_die(self, batch, logs=None):
            guard(self, batch, logs)
            if int(self.model.optimizer.iterations.numpy()) == 2 * 3 + 2:
                os.kill(os.getpid(), signal.SIGKILL)

        callbacks.NonFiniteGuard.on_train_batch_end = guard_then_die
    else:
        replace = evaluation.os.replace

        def die_before_metrics(source, target):
            if target.endswith("metrics.json"):
                os.kill(os.getpid(), signal.SIGKILL)
            replace(source, target)

        evaluation.os.replace = die_before_metrics
    sys.argv = ["train", *argv]
    train.console_main()
""")


@pytest.fixture(scope="module")
def tiny_training_data(tmp_path_factory):
    from helpers import class_coded_log_mel, make_prepared_dir

    directory = tmp_path_factory.mktemp("prepared")
    # Every clip at most 32 frames: one padded length, fewer traces of the evaluation step.
    make_prepared_dir(directory, {"train": [20 + i % 7 for i in range(24)], "validation": [18, 30, 25],
                                  "test": [31, 17, 20, 28, 25, 19]},
                      num_mels=32, num_classes=3, spectrogram=class_coded_log_mel)
    return str(directory)


def train_command(data_dir, model_dir, *how):
    # 3 batches per epoch; patience 0: the curriculum moves on every epoch, so stage = epoch - 1.
    return [sys.executable, *how, f"--data_dir={data_dir}", f"--model_dir={model_dir}", "--batch_size=8",
            "--eval_batch_size=8", "--train_frames=16", "--epochs=3", "--patience=0", "--warmup_steps=2",
            "--learning_rate=1e-3", "--media_freq=0", "--verbose=2", "--init_examples=24"]


def epoch_logs(stdout):
    """{epoch: the values Keras printed at its end} of `--verbose=2` output, timings left out."""
    logs, epoch = {}, None
    for line in stdout.splitlines():
        if line.startswith("Epoch "):
            epoch = int(line.split()[1].split("/")[0])
        elif epoch is not None and " - loss: " in line:
            logs[epoch] = {name: float(value) for name, value in
                           (item.split(": ") for item in line.split(" - ") if ": " in item)}
    return logs


@pytest.mark.slow
def test_training_killed_mid_epoch_or_while_writing_metrics_resumes_where_it_stopped(tiny_training_data, tmp_path):
    def run(command, expected_status):
        completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert completed.returncode == expected_status, completed.stderr[-3000:]
        return completed

    def metrics(path):
        with open(path) as f:
            # Minus what describes the process rather than the model: wall time, and the budget's
            # CPU seconds and epochs run (a resumed process runs only the epochs after the kill).
            return {key: value for key, value in json.load(f).items() if key not in ("train_seconds", "budget")}

    reference = str(tmp_path / "reference")
    reference_logs = epoch_logs(run(train_command(tiny_training_data, reference, "-m", "amych_tf.train"), 0).stdout)
    assert sorted(reference_logs) == [1, 2, 3]
    assert not os.path.exists(os.path.join(reference, "backup"))  # the run is complete: a rerun trains anew

    # SIGKILL in the 3rd epoch: the backup holds the end of the 2nd.
    model_dir = str(tmp_path / "run")
    killed = run(train_command(tiny_training_data, model_dir, "-c", KILLED_TRAINING, "epoch"), -signal.SIGKILL)
    assert sorted(epoch_logs(killed.stdout)) == [1, 2]
    assert os.listdir(os.path.join(model_dir, "backup")) == ["epoch-2"]
    # The same command resumes there, in the same curriculum stage, not from scratch; killed again when
    # metrics.json, complete under its temporary name, is about to get its name.
    killed = run(train_command(tiny_training_data, model_dir, "-c", KILLED_TRAINING, "metrics"), -signal.SIGKILL)
    resumed = epoch_logs(killed.stdout)
    assert sorted(resumed) == [3] and resumed[3]["curriculum_stage"] == reference_logs[3]["curriculum_stage"] == 2
    assert not os.path.exists(os.path.join(model_dir, "metrics.json"))  # never half-written
    # The trained state stays for a rerun, which evaluates it without training (test below).
    assert os.listdir(os.path.join(model_dir, "backup")) == ["epoch-3"]
    # The test metrics are those of the best validation checkpoint, here from before the kill, which the
    # rerun keeps because it remembers the best validation loss: equal to the last bit (tolerance 0).
    # Epochs after a resume see another data stream than an uninterrupted run (amych_tf.training.resume), so
    # a best checkpoint from after the resume would differ as much as a run with another shuffle does.
    assert metrics(os.path.join(model_dir, "metrics.json.tmp")) == metrics(os.path.join(reference, "metrics.json"))

class Interrupt(Exception):
    pass


def test_backup_survives_half_written_files(tmp_path):
    """What a kill while writing a checkpoint or a backup leaves: a restore puts things right."""
    import keras

    from amych_tf.training import resume

    inputs = np.linspace(-1.0, 1.0, 32, dtype=np.float32)[:, None]
    best_path = str(tmp_path / "best.weights.h5")
    seen = []  # (epoch, best loss ModelCheckpoint knows, best.weights.h5 readable) at each epoch start

    def readable(path):
        try:
            keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]).load_weights(path)
        except (OSError, ValueError):
            return False
        return True

    class Probe(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append((epoch, self.best_checkpoint.best, os.path.exists(best_path) and readable(best_path)))
            if epoch == stop_at:
                raise Interrupt()

    def fit(epochs):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
        model.compile(keras.optimizers.SGD(0.1), loss="mse")
        best = keras.callbacks.ModelCheckpoint(best_path, save_weights_only=True, save_best_only=True,
                                               monitor="loss")
        probe = Probe()
        probe.best_checkpoint = best
        backup = resume.TrainingBackup(str(tmp_path / "backup"), tracked=[best])
        model.fit(inputs, 2 * inputs, epochs=epochs, batch_size=8, verbose=0, callbacks=[best, backup, probe])
        return best

    stop_at = 2
    with pytest.raises(Interrupt):
        fit(4)
    interrupted = seen.pop()
    # A kill while best.weights.h5 was rewritten, and another while the next backup was written.
    with open(best_path, "r+b") as f:
        f.truncate(os.path.getsize(best_path) // 2)
    os.makedirs(tmp_path / "backup" / ".epoch-killed")
    (tmp_path / "backup" / ".epoch-killed" / resume.WEIGHTS_FILENAME).write_bytes(b"half")

    stop_at = None
    seen.clear()
    fit(4)
    # Resumed after the two epochs of the backup, remembering the best loss of those epochs,
    # with best.weights.h5 whole again.
    assert seen[0] == interrupted and interrupted[0] == 2 and np.isfinite(interrupted[1]) and interrupted[2]
    assert os.listdir(tmp_path / "backup") == ["epoch-4"]  # the final state, kept until discard()
    seen.clear()
    fit(4)  # a rerun after a kill during the final evaluation: nothing to train
    assert seen == [] and os.listdir(tmp_path / "backup") == ["epoch-4"]
