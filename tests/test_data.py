"""The tf.data pipelines of amych_tf.data on tiny prepared directories written by the tests."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from amych_tf import data
from amych_tf.spectral import FeatureConfig
from helpers import make_prepared_dir

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def clip_ids(batch_log_mel):
    """Clip index of each example of a batch of frame-coded log-Mels (bin 1, see helpers)."""
    return batch_log_mel[:, 0, 1].astype(int).tolist()


def epoch_clip_ids(dataset):
    return [i for features, _ in dataset for i in clip_ids(features["log_mel"].numpy())]


def constant_log_mel(value):
    return lambda index, num_frames, num_mels: np.full((num_frames, num_mels), value, np.float32)


# ---------------------------------------------------------------------------
# Validation


def test_load_dataset_info_validates_the_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_dataset_info(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="dataset_info.json is missing"):
        data.load_dataset_info(str(tmp_path))

    directory = str(tmp_path / "ds")
    info = make_prepared_dir(directory, [4] * 6, num_mels=16, shard_size=2)
    loaded = data.load_dataset_info(directory, expected_features=info.features)
    assert loaded.split_counts == {"train": 6, "validation": 6, "test": 6}

    with pytest.raises(ValueError, match=r"n_mels: 32 != 16") as error:
        data.load_dataset_info(directory, expected_features=FeatureConfig(16000, 1024, 512, n_mels=32))
    assert directory in str(error.value)

    os.remove(os.path.join(directory, data.shard_filename("validation", 1, 3)))
    with pytest.raises(FileNotFoundError, match=r"1 of 3 validation shard\(s\) are missing: validation-00001-of-00003"):
        data.load_dataset_info(directory)

    with open(os.path.join(directory, data.INFO_FILENAME), "w") as f:
        f.write("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        data.load_dataset_info(directory)


def test_argument_errors(tmp_path):
    make_prepared_dir(tmp_path, {"train": [4] * 3, "test": [4]}, num_mels=8)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        data.training_dataset(str(tmp_path), batch_size=4, train_frames=4, seed=0)
    with pytest.raises(ValueError, match="no validation examples"):
        data.evaluation_dataset(str(tmp_path), "validation", batch_size=2)
    with pytest.raises(ValueError, match="Unknown split"):
        data.evaluation_dataset(str(tmp_path), "dev", batch_size=2)
    strategy = tf.distribute.get_strategy()  # one replica: every batch divides
    assert data.distributed_training_dataset(strategy, str(tmp_path), global_batch_size=3, train_frames=4, seed=0)


def test_steps_per_epoch(tmp_path):
    info = make_prepared_dir(tmp_path, {"train": [4] * 10, "test": [4] * 5}, num_mels=8)
    assert data.steps_per_epoch(info, "train", 4) == 2
    assert data.steps_per_epoch(info, "test", 4, drop_remainder=False) == 2
    assert data.steps_per_epoch(info, "validation", 4) == 0
    ds = data.training_dataset(str(tmp_path), batch_size=4, train_frames=4, seed=0)
    assert ds.cardinality().numpy() == 2 == len(list(ds))
    ev = data.evaluation_dataset(str(tmp_path), "test", batch_size=4)
    assert len(list(ev)) == 2


# ---------------------------------------------------------------------------
# Training pipeline


def test_training_elements_have_the_model_structure(tmp_path):
    make_prepared_dir(tmp_path, [10, 30, 50, 7, 20, 25, 12, 40, 9], num_mels=16, shard_size=2)
    ds = data.training_dataset(str(tmp_path), batch_size=4, train_frames=24, seed=0)
    features, labels = next(iter(ds))
    assert set(features) == {"log_mel", "mask"}
    assert features["log_mel"].shape == (4, 24, 16) and features["log_mel"].dtype == tf.float32
    assert features["mask"].shape == (4, 24) and features["mask"].dtype == tf.float32
    assert labels.shape == (4,) and labels.dtype == tf.int32
    np.testing.assert_array_equal(features["mask"].numpy(), 1.0)
    # Static shapes, for compiled training steps.
    assert ds.element_spec[0]["log_mel"].shape == (4, 24, 16)


def test_training_crops_windows_of_long_clips_and_tiles_short_ones(tmp_path):
    lengths = [3, 7, 12, 20, 40]
    train_frames = 12
    make_prepared_dir(tmp_path, {"train": lengths}, num_mels=8, shard_size=2)
    ds = data.training_dataset(str(tmp_path), batch_size=1, train_frames=train_frames, seed=3, augment=False)
    offsets = {i: set() for i in range(len(lengths))}
    for _ in range(30):  # epochs
        for features, labels in ds:
            log_mel = features["log_mel"].numpy()[0]
            (clip,) = clip_ids(log_mel[None])
            assert labels.numpy()[0] == clip % 3
            n, offset = lengths[clip], int(log_mel[0, 0])
            np.testing.assert_array_equal(log_mel[:, 0], (offset + np.arange(train_frames)) % n)
            offsets[clip].add(offset)
    assert offsets[0] == {0, 1, 2}  # 3 frames: tiled, every phase drawn
    assert offsets[1] <= set(range(7)) and len(offsets[1]) >= 5
    assert offsets[2] == {0}  # exactly train_frames: the whole clip
    assert offsets[3] <= set(range(9)) and len(offsets[3]) >= 6
    assert offsets[4] <= set(range(29)) and len(offsets[4]) >= 12


def test_training_order_is_seeded_and_reshuffled_each_epoch(tmp_path):
    make_prepared_dir(tmp_path, {"train": [6 + i % 5 for i in range(40)]}, num_mels=8, shard_size=6)

    def two_epochs(seed, augment):
        ds = data.training_dataset(str(tmp_path), batch_size=4, train_frames=8, seed=seed, augment=augment,
                                   shuffle_buffer=16)
        return [[(f["log_mel"].numpy(), y.numpy()) for f, y in ds] for _ in range(2)]

    first, again, other = two_epochs(1, False), two_epochs(1, False), two_epochs(2, False)
    ids = lambda epoch: [i for log_mel, _ in epoch for i in clip_ids(log_mel)]  # noqa: E731
    assert ids(first[0]) == ids(again[0]) and ids(first[1]) == ids(again[1])
    assert ids(first[0]) != ids(first[1])  # reshuffled each iteration
    assert ids(first[0]) != ids(other[0])
    assert sorted(ids(first[0])) == list(range(40)) == sorted(ids(other[1]))  # one epoch = one pass

    augmented, augmented_again = two_epochs(1, True), two_epochs(1, True)
    for epoch, epoch_again in zip(augmented, augmented_again):
        for (log_mel, labels), (log_mel_again, labels_again) in zip(epoch, epoch_again):
            np.testing.assert_array_equal(log_mel, log_mel_again)
            np.testing.assert_array_equal(labels, labels_again)


def test_augmentation_bias_and_noise_statistics(tmp_path):
    value = 0.5
    make_prepared_dir(tmp_path, {"train": [16] * 128}, num_mels=16, spectrogram=constant_log_mel(value))
    ds = data.training_dataset(str(tmp_path), batch_size=32, train_frames=16, seed=0)
    deviation = np.concatenate([f["log_mel"].numpy() for _ in range(2) for f, _ in ds]) - value  # [256, 16, 16]
    bias = deviation.mean(axis=(1, 2))  # a pitch shift leaves a constant spectrum unchanged
    noise = deviation - bias[:, None, None]
    assert abs(bias.std() - data.BIAS_STD) < 0.008  # 256 draws: standard error 0.0022
    assert abs(bias.mean()) < 0.012
    assert abs(noise.std() - data.NOISE_STD) < 3e-4  # 65536 draws
    assert abs(noise.mean()) < 1e-4


def test_augmentation_pitch_shift_moves_a_peak_by_a_lognormal_ratio(tmp_path):
    config = FeatureConfig(sample_rate=16000, n_fft=1024, hop_length=512, n_mels=64)
    log_hz = np.log(config.mel_frequencies())
    peak_log_hz, width = np.log(1500.0), 0.15

    def bump(index, num_frames, num_mels):
        return np.tile(np.exp(-0.5 * ((log_hz - peak_log_hz) / width) ** 2), (num_frames, 1)).astype(np.float32)

    make_prepared_dir(tmp_path, {"train": [4] * 200}, num_mels=64, spectrogram=bump)
    ds = data.training_dataset(str(tmp_path), batch_size=50, train_frames=4, seed=0)
    profiles = np.concatenate([f["log_mel"].numpy().mean(axis=1) for _ in range(2) for f, _ in ds])  # [400, 64]

    # Fit each profile's shift in log-frequency against shifted copies of the bump
    # (correlation is blind to the bias; frame averaging quiets the noise).
    candidates = np.linspace(-0.9, 0.9, 1801)
    templates = np.exp(-0.5 * ((log_hz[None, :] - peak_log_hz - candidates[:, None]) / width) ** 2)
    templates -= templates.mean(axis=1, keepdims=True)
    templates /= np.linalg.norm(templates, axis=1, keepdims=True)
    centred = profiles - profiles.mean(axis=1, keepdims=True)
    centred /= np.linalg.norm(centred, axis=1, keepdims=True)
    correlation = centred @ templates.T
    log_ratio = candidates[correlation.argmax(axis=1)]
    assert correlation.max(axis=1).min() > 0.98  # the bump is moved, not deformed
    assert abs(log_ratio.std() - data.PITCH_LOG_STD) < 0.02  # 400 draws: standard error 0.0053
    assert abs(log_ratio.mean()) < 0.03


def test_float16_storage_is_read_as_float32(tmp_path):
    rng = np.random.default_rng(0)
    clips = [rng.random((n, 8)).astype(np.float32) for n in (5, 9, 16)]
    make_prepared_dir(tmp_path, {"train": [5, 9, 16], "test": [5, 9, 16]}, num_mels=8, storage_dtype="float16",
                      spectrogram=lambda i, n, m: clips[i])
    features, _ = next(iter(data.evaluation_dataset(str(tmp_path), "test", batch_size=3)))
    assert features["log_mel"].dtype == tf.float32
    for i, clip in enumerate(clips):
        np.testing.assert_array_equal(features["log_mel"].numpy()[i, : len(clip)], clip.astype(np.float16))
    train_features, _ = next(iter(data.training_dataset(str(tmp_path), batch_size=3, train_frames=4, seed=0)))
    assert train_features["log_mel"].dtype == tf.float32


# ---------------------------------------------------------------------------
# Evaluation pipeline


def test_evaluation_batches_hold_clips_of_one_padded_length_with_masks(tmp_path):
    lengths = [5, 17, 33, 40, 16, 3, 8, 9, 10]
    make_prepared_dir(tmp_path, {"test": lengths}, num_mels=8, shard_size=4, midi_note=lambda i: 40 + i)
    ds = data.evaluation_dataset(str(tmp_path), "test", batch_size=4, with_metadata=True)
    batches = list(ds)
    # Padded lengths 16 (clips 0, 4, 5, 6, 7, 8), 32 (clip 1), 48 (clips 2, 3): each clip to
    # its own multiple of 16, a batch as soon as 4 clips of one length have arrived.
    assert sorted((f["log_mel"].shape[1], f["log_mel"].shape[0]) for f, _ in batches) == [
        (16, 2), (16, 4), (32, 1), (48, 2)]
    assert clip_ids(batches[0][0]["log_mel"].numpy()) == [0, 4, 5, 6]  # file order within a length
    paths, seen = [], []
    for features, labels in batches:
        log_mel, mask = features["log_mel"].numpy(), features["mask"].numpy()
        for b, n in enumerate(features["num_frames"].numpy()):
            frames = np.arange(log_mel.shape[1])
            assert log_mel.shape[1] == -(-n // 16) * 16
            np.testing.assert_array_equal(log_mel[b, :, 0], frames % n)  # padding repeats the clip
            np.testing.assert_array_equal(mask[b], (frames < n).astype(np.float32))
        seen += clip_ids(log_mel)
        np.testing.assert_array_equal(features["index"].numpy(), clip_ids(log_mel))
        np.testing.assert_array_equal(features["midi_note"].numpy(), 40 + np.array(clip_ids(log_mel)))
        paths += [p.decode() for p in features["path"].numpy()]
        assert labels.dtype == tf.int32
        np.testing.assert_array_equal(labels.numpy(), np.array(clip_ids(log_mel)) % 3)
    with open(tmp_path / data.MANIFEST_FILENAME) as f:
        manifest = [line.split(",")[3] for line in f.read().splitlines()[1:]]
    assert sorted(seen) == list(range(len(lengths)))
    assert [paths[seen.index(i)] for i in range(len(lengths))] == manifest
    assert [p.decode() for f, _ in ds for p in f["path"].numpy()] == paths  # the same order again

    plain, _ = next(iter(data.evaluation_dataset(str(tmp_path), "test", batch_size=4, multiple_of=1)))
    assert set(plain) == {"log_mel", "mask"}


def test_a_clip_is_padded_the_same_whatever_the_batch_size(tmp_path):
    lengths = [5, 17, 33, 40, 16, 3, 8, 9, 10, 21, 47]
    make_prepared_dir(tmp_path, {"test": lengths}, num_mels=8, shard_size=3)

    def padded_clips(batch_size):
        clips = {}
        for features, _ in data.evaluation_dataset(str(tmp_path), "test", batch_size=batch_size):
            for log_mel, mask in zip(features["log_mel"].numpy(), features["mask"].numpy()):
                clips[int(log_mel[0, 1])] = (log_mel, mask)
        return clips

    reference = padded_clips(1)
    for batch_size in (2, 4, 64):
        clips = padded_clips(batch_size)
        assert sorted(clips) == sorted(reference)
        for i, (log_mel, mask) in clips.items():
            np.testing.assert_array_equal(log_mel, reference[i][0])
            np.testing.assert_array_equal(mask, reference[i][1])


# ---------------------------------------------------------------------------
# Sharding across input pipelines (workers)


@pytest.mark.parametrize("num_clips, shard_size, by_files", [(12, 2, True), (12, 12, False)])
def test_input_pipelines_share_the_data_exactly_once(tmp_path, num_clips, shard_size, by_files):
    make_prepared_dir(tmp_path, [6] * num_clips, num_mels=8, shard_size=shard_size)
    train_ids, eval_ids = [], []
    for pipeline in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline,
                                             num_replicas_in_sync=2)
        train = data.training_dataset(str(tmp_path), batch_size=1, train_frames=6, seed=0, augment=False,
                                      input_context=context)
        assert (train.cardinality().numpy() == tf.data.UNKNOWN_CARDINALITY) == by_files
        train_ids.append(epoch_clip_ids(train))
        evaluation = data.evaluation_dataset(str(tmp_path), "test", batch_size=4, input_context=context)
        eval_ids.append(epoch_clip_ids(evaluation))
    assert sorted(train_ids[0] + train_ids[1]) == list(range(num_clips))
    assert eval_ids == [list(range(0, num_clips, 2)), list(range(1, num_clips, 2))]  # by examples
    if by_files:  # shards 0, 2, 4 to pipeline 0
        assert sorted(train_ids[0]) == [0, 1, 4, 5, 8, 9]


def test_one_pipeline_feeding_two_replicas_gives_whole_steps(tmp_path):
    make_prepared_dir(tmp_path, [6] * 11, num_mels=8)
    context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=2)
    train = data.training_dataset(str(tmp_path), batch_size=2, train_frames=6, seed=0, input_context=context)
    # 11 examples, 4 per step: 2 steps of 2 per-replica batches (never a step with one replica idle).
    assert train.cardinality().numpy() == 4
    assert [labels.shape[0] for _, labels in train] == [2, 2, 2, 2]


DISTRIBUTED_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import tensorflow as tf
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    tf.random.set_seed(0)  # as conftest does in the parent process
    from amych_tf import data

    data_dir = sys.argv[1]
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    result = {"replicas": strategy.num_replicas_in_sync, "train_shapes": [], "eval_paths": [], "eval_lengths": []}
    train = data.distributed_training_dataset(strategy, data_dir, global_batch_size=4, train_frames=8, seed=5)
    for features, labels in train:
        for log_mel, mask, label in zip(*(strategy.experimental_local_results(t)
                                          for t in (features["log_mel"], features["mask"], labels))):
            result["train_shapes"].append([log_mel.shape.as_list(), mask.shape.as_list(), label.shape.as_list()])
    evaluation = data.distributed_evaluation_dataset(strategy, data_dir, "test", global_batch_size=4,
                                                     with_metadata=True)
    for features, _ in evaluation:
        for paths, log_mel in zip(strategy.experimental_local_results(features["path"]),
                                  strategy.experimental_local_results(features["log_mel"])):
            result["eval_paths"] += [p.decode() for p in paths.numpy()]
            result["eval_lengths"].append(log_mel.shape[1])
    try:
        data.distributed_training_dataset(strategy, data_dir, global_batch_size=5, train_frames=8, seed=5)
    except ValueError as error:
        result["indivisible_error"] = str(error)
    # Run-to-run reproducibility: the parent compares this order with its own.
    single = data.training_dataset(data_dir, batch_size=2, train_frames=8, seed=5, augment=False)
    result["train_order"] = [int(x) for f, _ in single for x in f["log_mel"].numpy()[:, 0, 1]]
    print(json.dumps(result))
    """
)


def test_mirrored_strategy_on_two_cpu_devices(tmp_path):
    """Runs in a subprocess: logical devices must be set before TensorFlow initialises them."""
    make_prepared_dir(tmp_path, {"train": [8] * 14, "test": [5, 17, 3, 9, 12, 30, 7, 8, 20]}, num_mels=8)
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [TESTS_DIR, os.environ.get("PYTHONPATH")])))
    completed = subprocess.run([sys.executable, "-c", DISTRIBUTED_SCRIPT, str(tmp_path)], capture_output=True,
                               text=True, env=environment, timeout=120)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    # 14 examples at a global batch of 4: 3 steps, each replica a full batch of 2 every step.
    assert result["train_shapes"] == [[[2, 8, 8], [2, 8], [2]]] * 6
    assert sorted(result["eval_paths"]) == [f"test/clip-{i:04d}.wav" for i in range(9)]  # each clip once
    assert all(length % 16 == 0 for length in result["eval_lengths"])
    assert "global_batch_size (5)" in result["indivisible_error"]
    single = data.training_dataset(str(tmp_path), batch_size=2, train_frames=8, seed=5, augment=False)
    assert result["train_order"] == epoch_clip_ids(single)
