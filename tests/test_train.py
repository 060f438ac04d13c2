"""The train entry point: flags checked first, model_dir contents, TensorBoard tags, resume, strategies."""

import glob
import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from absl.testing import flagsaver

from helpers import class_coded_log_mel, make_prepared_dir, run_command_main

from amych_tf import data
from amych_tf.cli import evaluate, train
from amych_tf.training import callbacks, curriculum, resume, trainer
from amych_tf.training.config import ConfigError, TrainConfig, read_train_config

FLAGS = flags.FLAGS
train.define_flags()
NUM_MELS = 32
NUM_CLASSES = 3


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    directory = tmp_path_factory.mktemp("prepared")
    make_prepared_dir(directory, {"train": [40 + i % 7 for i in range(24)], "validation": [20, 36, 50],
                                  "test": [33, 17, 48, 60, 25, 40]},
                      num_mels=NUM_MELS, num_classes=NUM_CLASSES, spectrogram=class_coded_log_mel)
    return str(directory)


def train_flags(data_dir, model_dir, **overrides):
    values = dict(data_dir=data_dir, model_dir=model_dir, batch_size=8, eval_batch_size=8, train_frames=32,
                  epochs=4, patience=1, warmup_steps=2, learning_rate=1e-3, media_freq=3, media_examples=2,
                  verbose=0, init_examples=24)
    values.update(overrides)
    return values


def run_training(**values):
    FLAGS.unparse_flags()
    FLAGS(["train"])
    with flagsaver.flagsaver(**values):
        config = train.config_from_flags()
        return trainer.train(config, trainer.check(config), flags_text=FLAGS.flags_into_string())  # as the CLI does


def check_flags_error(**values):
    FLAGS.unparse_flags()
    FLAGS(["train"])
    with flagsaver.flagsaver(**values):
        with pytest.raises(ConfigError) as error:
            trainer.check(train.config_from_flags())
    return str(error.value)


def test_bad_flags_fail_with_clear_messages(tiny_data, tmp_path):
    model_dir = str(tmp_path / "run")
    assert "--data_dir is required" in check_flags_error(data_dir=None, model_dir=model_dir)
    assert "does not exist" in check_flags_error(data_dir=str(tmp_path / "missing"), model_dir=model_dir)
    (tmp_path / "empty").mkdir()
    assert "dataset_info.json" in check_flags_error(data_dir=str(tmp_path / "empty"), model_dir=model_dir)
    message = check_flags_error(**train_flags(tiny_data, model_dir, num_prototypes=2))
    assert "--num_prototypes=2 is smaller than the 3 classes" in message
    assert "multiple of 16" in check_flags_error(**train_flags(tiny_data, model_dir, train_frames=40))
    assert "fewer than one batch" in check_flags_error(**train_flags(tiny_data, model_dir, batch_size=64))
    # A model_dir trained on other features refuses this dataset.
    os.makedirs(model_dir)
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump({"model": {"feature_config": {"sample_rate": 44100, "n_fft": 2048, "hop_length": 512,
                                                "n_mels": 128, "power": 2.0}}}, f)
    assert "sample_rate" in check_flags_error(**train_flags(tiny_data, model_dir))


def test_inconsistent_options_are_refused_before_any_work(tiny_data, tmp_path, monkeypatch):
    model_dir = str(tmp_path / "run")
    assert "--batch_size and --eval_batch_size must be positive" in check_flags_error(
        **train_flags(tiny_data, model_dir, batch_size=0))
    for rate in (-1e-3, 0.0, float("nan")):
        assert "--learning_rate must be positive and finite" in check_flags_error(
            **train_flags(tiny_data, model_dir, learning_rate=rate))
    assert "--weight_decay must be >= 0" in check_flags_error(**train_flags(tiny_data, model_dir, weight_decay=-1.0))

    # dataset_info.json truncated, of the wrong shape or with fields of the wrong type: one line naming the file.
    with open(os.path.join(tiny_data, "dataset_info.json")) as f:
        good = f.read()
    info = json.loads(good)
    broken = {"truncated": good[: len(good) // 2], "not an object": '"x"', "binary": b"\xff\xfe\x00",
              "split_counts a list": json.dumps({**info, "split_counts": [24, 3, 6]}),
              "class_names a number": json.dumps({**info, "class_names": 3}),
              "num_shards a string": json.dumps({**info, "num_shards": {"train": "6"}})}
    for case, content in broken.items():
        corrupt_dir = tmp_path / "corrupt"
        shutil.copytree(tiny_data, corrupt_dir, dirs_exist_ok=True)
        (corrupt_dir / "dataset_info.json").write_bytes(content if isinstance(content, bytes) else content.encode())
        message = check_flags_error(**train_flags(str(corrupt_dir), model_dir))
        assert str(corrupt_dir / "dataset_info.json") in message, (case, message)
    assert not os.path.exists(model_dir)  # nothing was started

    # Resuming a run on a dataset with other classes (same features) is refused too.
    os.makedirs(model_dir)
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump({"model": {"feature_config": info["features"]},
                   "dataset": {"class_names": ["class0", "class1", "other"]}}, f)
    assert "trained on other classes" in check_flags_error(**train_flags(tiny_data, model_dir))

    # Crops longer than every clip are not an error: clips are tiled, and the log says so.
    warnings = []
    monkeypatch.setattr(trainer.logging, "warning", lambda message, *args: warnings.append(message % args))
    FLAGS.unparse_flags()
    FLAGS(["train"])
    with flagsaver.flagsaver(**train_flags(tiny_data, str(tmp_path / "long"), train_frames=64)):
        trainer.check(train.config_from_flags())
    assert warnings == ["--train_frames=64 is longer than every training clip (the longest has 46 frames): "
                        "every crop repeats (tiles) its clip to 64 frames"]


def test_train_config_is_saved_whole_and_read_back():
    config = TrainConfig(data_dir="/data/d", model_dir="m", model="direct", batch_size=64, devices=["/cpu:0"])
    saved = json.loads(json.dumps({"model_name": "direct", "dataset": {"data_dir": "/data/d"},
                                   "train": config.to_dict()}))
    assert read_train_config(saved) == config
    # config.json of a run trained before the whole config was saved: defaults, data and model from elsewhere.
    earlier = {"model_name": "apnet", "dataset": {"data_dir": "/data/d"},
               "train": {"mode": "supervised", "train_frames": 64, "batch_size": 8}}
    restored = read_train_config(earlier)
    assert (restored.model, restored.data_dir, restored.train_frames, restored.batch_size, restored.learning_rate) \
        == ("apnet", "/data/d", 64, 8, 1e-4)
    with pytest.raises(ConfigError, match="unknown training options"):
        TrainConfig.from_dict({"batchsize": 3})
    with pytest.raises(ConfigError, match="--blur_bins must be >= 0.0"):
        TrainConfig(data_dir="d", model_dir="m", blur_bins=-1.0).check()
    with pytest.raises(ConfigError, match="--curriculum_stop=ce is not a stage of unsupervised training"):
        TrainConfig(data_dir="d", model_dir="m", mode="unsupervised", curriculum_stop="ce").check()
    with pytest.raises(ConfigError, match="--export_dir exports PlayablePrototypes only"):
        TrainConfig(data_dir="d", model_dir="m", model="apnet", export_dir="e").check()


def test_command_line_error_is_one_line_and_exit_status_2(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "amych_tf.train", f"--data_dir={tmp_path}/nothing", f"--model_dir={tmp_path}/run"],
        capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2
    lines = [line for line in completed.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "does not exist" in lines[0], completed.stderr


def event_tags(directory):
    """{tag: plugin} of every summary written under `directory`."""
    import tensorflow as tf

    tags = {}
    for path in glob.glob(os.path.join(directory, "**", "events.out.tfevents.*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags[value.tag] = value.metadata.plugin_data.plugin_name or "scalar"
    return tags


@pytest.mark.slow
def test_training_writes_the_model_dir_and_tensorboard_media(tiny_data, tmp_path, capsys):
    model_dir = str(tmp_path / "run")
    summary = run_training(**train_flags(tiny_data, model_dir))
    for name in ("flags.txt", "config.json", "metrics.json", "checkpoints/latest.weights.h5",
                 "checkpoints/best.weights.h5", "checkpoints/stage-0-raw.weights.h5"):
        assert os.path.exists(os.path.join(model_dir, name)), name
    with open(os.path.join(model_dir, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics == json.loads(json.dumps(summary))
    assert metrics["num_examples"] == 6 and 0.0 <= metrics["overall_accuracy"] <= 1.0
    assert np.isfinite(metrics["rec_error"]) and len(metrics["confusion_matrix"]) == NUM_CLASSES
    assert "--train_frames=32" in open(os.path.join(model_dir, "flags.txt")).read()

    tags = event_tags(os.path.join(model_dir, "logs"))
    for tag in ("epoch_loss", "epoch_rec", "epoch_ce", "epoch_accuracy", "epoch_average_accuracy",
                "beta", "curriculum_stage", "learning_rate/encoder", "learning_rate/prototypes"):
        assert tag in tags, (tag, sorted(tags))
    for tag in ("prototype_gallery", "confusion_matrix", "assignments", "reconstruction/0", "reconstruction/1"):
        assert tags.get(tag) == "images", (tag, tags.get(tag))
    assert tags.get("prototype_audio") == "audio", tags.get("prototype_audio")
    for tag in ("transformations/gain", "transformations/pitch_ratio", "transformations/high_cutoff"):
        assert tags.get(tag) == "histograms", (tag, tags.get(tag))

    # The evaluate command on the same checkpoint and split reproduces training's final metrics (its main()
    # in this process: `python -m amych_tf.report` below and test_export/test_compare start commands anew).
    output = str(tmp_path / "eval" / "test.json")
    status, stdout, stderr = run_command_main(evaluate, [f"--model_dir={model_dir}", "--split=test",
                                                         f"--output={output}"], capsys)
    assert status == 0, stderr[-3000:]
    with open(output) as f:
        evaluated = json.load(f)
    for key in ("overall_accuracy", "average_accuracy", "confusion_matrix", "per_class_accuracy", "num_examples"):
        assert evaluated[key] == metrics[key], key
    assert abs(evaluated["rec_error"] - metrics["rec_error"]) < 1e-6
    assert os.path.getsize(str(tmp_path / "eval" / "test.png")) > 1000
    assert stdout.startswith("test OA ")
    # Table 1 of the run: one row per stage checkpoint, on the validation split.
    completed = subprocess.run([sys.executable, "-m", "amych_tf.report", f"--model_dir={model_dir}"],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    with open(os.path.join(model_dir, "table1-validation.json")) as f:
        table = json.load(f)
    stages = sorted(glob.glob(os.path.join(model_dir, "checkpoints", "stage-*.weights.h5")))
    assert [row["checkpoint"] for row in table["rows"]] == [os.path.relpath(p, model_dir) for p in stages]
    assert table["rows"][0]["row"] == "raw prototypes" and "| raw prototypes |" in completed.stdout
    assert all(0.0 <= row["overall_accuracy"] <= 1.0 for row in table["rows"])
    status, _, stderr = run_command_main(evaluate, [f"--model_dir={tmp_path}/nothing"], capsys)
    assert status == 2 and stderr.count("error:") == 1, stderr


class Interrupt(Exception):
    pass


@pytest.mark.slow
def test_killed_run_resumes_in_the_same_stage_with_the_same_step_count(tiny_data, tmp_path, monkeypatch):
    model_dir = str(tmp_path / "run")
    # patience 0: a new curriculum stage every epoch, so the stage at the kill is known.
    values = train_flags(tiny_data, model_dir, epochs=4, media_freq=0, patience=0)  # killed after 3, resumed for 1
    seen = {}
    original_epoch_end = resume.TrainingBackup.on_epoch_end

    def backup_then_die(self, epoch, logs=None):
        original_epoch_end(self, epoch, logs)
        if epoch == 2:  # the backup of epoch 3 is written: now the process "dies"
            seen["state"] = np.array(self.model.curriculum_state.numpy())
            seen["iterations"] = int(self.model.optimizer.iterations.numpy())
            seen["prototypes"] = np.array(self.model.prototypes.numpy())
            raise Interrupt()

    monkeypatch.setattr(resume.TrainingBackup, "on_epoch_end", backup_then_die)
    with pytest.raises(Interrupt):
        run_training(**values)
    monkeypatch.setattr(resume.TrainingBackup, "on_epoch_end", original_epoch_end)
    assert seen["state"][curriculum.STAGE] == 3  # raw -> gain -> pitch -> filters

    resumed = {}
    original_epoch_begin = callbacks.Curriculum.on_epoch_begin

    def record(self, epoch, logs=None):
        if not resumed:  # the first epoch of the resumed run, after TrainingBackup's restore
            resumed.update(epoch=epoch, state=np.array(self.model.curriculum_state.numpy()),
                           iterations=int(self.model.optimizer.iterations.numpy()),
                           prototypes=np.array(self.model.prototypes.numpy()))
        original_epoch_begin(self, epoch, logs)

    monkeypatch.setattr(callbacks.Curriculum, "on_epoch_begin", record)
    run_training(**values)
    assert resumed["epoch"] == 3
    np.testing.assert_array_equal(resumed["state"], seen["state"])
    assert resumed["iterations"] == seen["iterations"] > 0
    np.testing.assert_array_equal(resumed["prototypes"], seen["prototypes"])
    assert os.path.exists(os.path.join(model_dir, "metrics.json"))


MIRRORED_SCRIPT = r"""
import sys
import numpy as np
import tensorflow as tf
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from amych_tf.model import PlayablePrototypes
from amych_tf.spectral import FeatureConfig

features = FeatureConfig(sample_rate=8000, n_fft=256, hop_length=128, n_mels=32)
rng = np.random.default_rng(0)
log_mel = (0.3 + 0.1 * rng.random((8, 32, 32))).astype(np.float32)
labels = (np.arange(8) % 4).astype(np.int32)

def one_step(devices):
    keras.utils.set_random_seed(0)
    strategy = tf.distribute.MirroredStrategy(devices)
    with strategy.scope():
        model = PlayablePrototypes(features, 4, start_width=4, bottleneck_width=16, decoder_width=8)
        model.build_for_frames(32)
        # Plain SGD: the update is the gradient itself. (Adam's first step, m / sqrt(v),
        # turns float rounding in near-zero gradients into full-size sign flips.)
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), jit_compile=False)
        model.set_active_transformations(("gain", "pitch", "low", "high"))
    weights = lambda: [np.array(v.numpy()) for v in model.weights if "curriculum" not in v.path]
    before = weights()
    dataset = tf.data.Dataset.from_tensor_slices(({"log_mel": log_mel}, labels)).batch(8)
    model.fit(dataset, epochs=1, verbose=0, shuffle=False)
    return before, weights(), strategy.num_replicas_in_sync, model

before_1, after_1, n1, _ = one_step(["/cpu:0"])
before_2, after_2, n2, model = one_step(["/cpu:0", "/cpu:1"])
assert (n1, n2) == (1, 2), (n1, n2)
for b1, b2 in zip(before_1, before_2):
    np.testing.assert_array_equal(b1, b2)
# Every weight (BatchNorm's moving statistics too: synchronised over replicas) moves
# the same way up to float rounding of the cross-replica sums. Convolutions followed by
# batch normalisation have near-zero gradients (BN removes their scale), where rounding
# is relatively large, so the comparison is on the whole update: a loss scaled by the
# per-replica instead of the global batch would double it.
update_1 = np.concatenate([(a - b).ravel() for a, b in zip(after_1, before_1)])
update_2 = np.concatenate([(a - b).ravel() for a, b in zip(after_2, before_1)])
relative = np.linalg.norm(update_2 - update_1) / np.linalg.norm(update_1)
print("relative difference of the updates", relative)
assert relative < 1e-3, relative
changed = sum(np.abs(a - b).max() > 0 for a, b in zip(after_1, before_1))
assert changed > 20, changed

# Logged metrics are over all examples, not averaged per replica: 11 clips split 6 + 5.
odd = (0.3 + 0.2 * rng.random((11, 32, 32))).astype(np.float32)
odd_labels = (np.arange(11) % 4).astype(np.int32)
logs = model.evaluate(tf.data.Dataset.from_tensor_slices(({"log_mel": odd}, odd_labels)).batch(11),
                      verbose=0, return_dict=True)
winners = model({"log_mel": odd}, training=False)["rec_errors"].numpy().argmin(1)
hits = winners == odd_labels
per_class = [hits[odd_labels == c].mean() for c in range(4)]
print("logged", logs["accuracy"], logs["average_accuracy"], "expected", hits.mean(), np.mean(per_class))
np.testing.assert_allclose(logs["accuracy"], hits.mean(), rtol=1e-6)
np.testing.assert_allclose(logs["average_accuracy"], np.mean(per_class), rtol=1e-6)
"""


@pytest.mark.slow
def test_two_replicas_give_the_same_update_as_one():
    """2 logical CPUs under MirroredStrategy vs 1, same global batch (subprocess: devices are set at start-up)."""
    completed = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
@pytest.mark.parametrize("num_workers", [1, 2])
def test_workers_on_localhost_complete_a_short_run(tiny_data, tmp_path, num_workers):
    """One worker too: its single replica's logs must reach the callbacks as scalars."""
    ports = free_ports(num_workers)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    model_dir = str(tmp_path / "run")
    args = [sys.executable, "-m", "amych_tf.train", f"--data_dir={tiny_data}", f"--model_dir={model_dir}",
            "--batch_size=8", "--eval_batch_size=8", "--train_frames=32", "--epochs=1", "--patience=1",
            "--warmup_steps=2", "--media_freq=0", "--verbose=0", "--init_examples=24"]
    processes = []
    for index in range(num_workers):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        processes.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [process.communicate(timeout=600) for process in processes]
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    assert f"MultiWorkerMirroredStrategy with {num_workers} replica(s)" in outputs[0][1]
    assert os.path.exists(os.path.join(model_dir, "metrics.json"))
    assert os.path.exists(os.path.join(model_dir, "workers", "worker-1", "metrics.json")) == (num_workers == 2)


@pytest.mark.slow
def test_unsupervised_run_maps_clusters_to_classes_and_exports(tiny_data, tmp_path):
    model_dir, export_dir = str(tmp_path / "run"), str(tmp_path / "saved_models" / "run")
    summary = run_training(**train_flags(tiny_data, model_dir, mode="unsupervised", epochs=2, media_freq=0,
                                         export_dir=export_dir))
    assert len(summary["prototype_classes"]) == NUM_CLASSES  # K defaults to the number of classes
    assert set(summary["unused_prototypes"]) <= set(range(NUM_CLASSES))
    assert 0.0 <= summary["overall_accuracy"] <= 1.0

    # --export_dir: version 1, prototypes named by the mapping evaluate computed.
    with open(os.path.join(export_dir, "1", "assets.extra", "amych_tf.json")) as f:
        assert json.load(f)["prototype_classes"] == summary["prototype_classes"]
    loaded = tf.saved_model.load(os.path.join(export_dir, "1"))
    result = loaded.signatures["classify_logmel"](log_mel=tf.fill([2, 40, NUM_MELS], 0.3))
    winners = result["prototype"].numpy()
    assert result["class_id"].numpy().tolist() == [summary["prototype_classes"][k] for k in winners]


def test_non_finite_data_stops_training_naming_the_examples_before_anything_is_saved(tiny_data, tmp_path, capsys):
    def with_non_finite_values(clip_index, num_frames, num_mels):
        log_mel = class_coded_log_mel(clip_index, num_frames, num_mels)
        if clip_index == 5:
            log_mel[:, 7] = np.nan  # in every frame (every training crop has it), train and test splits
        return log_mel

    data_dir = str(tmp_path / "prepared")
    make_prepared_dir(data_dir, {"train": [40] * 16, "validation": [40] * 3, "test": [40] * 6},
                      num_mels=NUM_MELS, num_classes=NUM_CLASSES, spectrogram=with_non_finite_values)
    model_dir = str(tmp_path / "run")
    FLAGS.unparse_flags()
    FLAGS(["train"])
    with flagsaver.flagsaver(**train_flags(data_dir, model_dir, batch_size=16, epochs=2, media_freq=0,
                                           augment=False)):
        with pytest.raises(SystemExit) as stopped:
            train.main(["train"])
    assert stopped.value.code == 3
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "loss became nan" in lines[0], lines
    assert ("2 stored example(s) have NaN or Inf log-Mel values: train/clip-0005.wav (train), "
            "test/clip-0005.wav (test); prepare the dataset again") in lines[0]
    assert not glob.glob(os.path.join(model_dir, "checkpoints", "*.h5"))  # no NaN prototypes saved
    assert not glob.glob(os.path.join(model_dir, "backup", "*"))
    assert not os.path.exists(os.path.join(model_dir, "metrics.json"))
    # Finite data: the message blames the optimisation instead.
    report = trainer.non_finite_data_report(tiny_data, data.load_dataset_info(tiny_data))
    assert report == "Every stored log-Mel is finite: the optimisation diverged (lower --learning_rate)."
