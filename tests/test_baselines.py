"""Baselines: direct classifier and conv autoencoder + K-means (training, config, padding, clustering)."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from amych_tf import data
from amych_tf.registry import model_class
from amych_tf.baselines.autoencoder import ConvAutoencoder, masked_reconstruction_error, nearest_centre
from amych_tf.baselines.direct import DirectClassifier, masked_max_over_time, pooled_mask, tile_padding
from amych_tf.spectral import FeatureConfig

from helpers import make_prepared_dir

NUM_MELS = 16
NUM_CLASSES = 3
FEATURES = FeatureConfig(sample_rate=16000, n_fft=1024, hop_length=512, n_mels=NUM_MELS)
TRAIN_FRAMES = 32
# Smaller than the defaults so the tests stay fast; not the defaults, so a config that
# drops them cannot rebuild the same weights.
SMALL = {DirectClassifier: dict(widths=(4, 8, 8, 16), dense_widths=(32, 16)), ConvAutoencoder: dict(filters=8)}


def class_peak_log_mel(clip_index, num_frames, num_mels):
    """Clip i of class i % 3: a low noisy background and a loud band at bins 2 + 5 * class."""
    rng = np.random.default_rng(clip_index)
    log_mel = 0.2 + 0.05 * rng.standard_normal((num_frames, num_mels))
    log_mel[:, 2 + 5 * (clip_index % NUM_CLASSES)] += 0.6
    return log_mel.astype(np.float32)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("prepared")
    lengths = {"train": [40] * 48, "validation": [20, 37, 48, 16, 50, 33], "test": [16, 50, 33]}
    make_prepared_dir(directory, lengths, num_mels=NUM_MELS, num_classes=NUM_CLASSES,
                      spectrogram=class_peak_log_mel)
    return str(directory)


def small_model(cls, **kwargs):
    model = cls(FEATURES, NUM_CLASSES, class_names=["a", "b", "c"], **SMALL[cls], **kwargs)
    model.build_for_frames(TRAIN_FRAMES)
    return model


def padded_batch(seed=0):
    """Two clips in 96 frames: clip 0 has 20 real frames, clip 1 all 96."""
    rng = np.random.default_rng(seed)
    log_mel = rng.random((2, 96, NUM_MELS)).astype(np.float32)
    mask = np.ones((2, 96), np.float32)
    mask[0, 20:] = 0.0
    return log_mel, mask


def with_new_padding(log_mel, mask, seed=1):
    """The same batch with large random values in every padded frame."""
    noise = 5.0 * np.random.default_rng(seed).standard_normal(log_mel.shape).astype(np.float32)
    return np.where(mask[..., None] > 0, log_mel, noise)


# -- the interface every baseline follows ------------------------------------------------


def test_model_class_names_the_baselines_and_their_interface():
    assert model_class("direct") is DirectClassifier and model_class("autoencoder") is ConvAutoencoder
    assert keras.saving.get_registered_object("amych_tf>DirectClassifier") is DirectClassifier
    assert keras.saving.get_registered_object("amych_tf>ConvAutoencoder") is ConvAutoencoder
    direct, autoencoder = small_model(DirectClassifier), small_model(ConvAutoencoder)
    assert (direct.mode, direct.num_prototypes) == ("supervised", NUM_CLASSES)
    assert (autoencoder.mode, autoencoder.num_prototypes) == ("unsupervised", NUM_CLASSES)
    for model in (direct, autoencoder):
        optimizer = model.default_optimizer(3e-4)
        assert isinstance(optimizer, keras.optimizers.Adam)
        assert float(optimizer.learning_rate.numpy()) == pytest.approx(3e-4)
    log_mel, mask = padded_batch()
    features = {"log_mel": log_mel, "mask": mask}
    classes = direct.predict_classes(features)
    assert classes.dtype == tf.int32 and classes.shape == (2,)
    assert autoencoder.embed(features).shape == (2, NUM_MELS // 16 * 8)
    clusters = autoencoder.predict_clusters(features)
    assert clusters.dtype == tf.int32 and clusters.shape == (2,)
    reconstruction = autoencoder.reconstruct(features).numpy()
    assert reconstruction.shape == log_mel.shape
    assert reconstruction.min() >= 0.0 and reconstruction.max() <= 1.0
    # BatchNorm as in networks.py (PyTorch's momentum), not Keras' 0.99.
    norms = [layer for layer in direct._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 10 and all(layer.momentum == 0.9 for layer in norms)


# -- training -----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [DirectClassifier, ConvAutoencoder])
def test_training_lowers_the_loss(data_dir, cls):
    keras.utils.set_random_seed(0)
    model = small_model(cls)
    model.compile(optimizer=model.default_optimizer(1e-2))
    train = data.training_dataset(data_dir, batch_size=8, train_frames=TRAIN_FRAMES, seed=0, augment=False)
    # Padded clips of 16 to 50 frames: test_step and inference mode on masked batches.
    validation = data.evaluation_dataset(data_dir, "validation", batch_size=3)
    before = model.evaluate(validation, verbose=0, return_dict=True)
    history = model.fit(train, epochs=8, verbose=0).history
    after = model.evaluate(validation, verbose=0, return_dict=True)
    assert history["loss"][-1] < 0.5 * history["loss"][0], history["loss"]
    assert after["loss"] < 0.5 * before["loss"], (before, after)
    if cls is DirectClassifier:
        # 48 steps: enough for the BatchNorm moving statistics to forget their initial values.
        assert after["accuracy"] == 1.0, after
    else:
        assert history["rec"] == history["loss"]


# -- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [DirectClassifier, ConvAutoencoder])
def test_config_round_trip_rebuilds_the_same_model(cls):
    model = small_model(cls)
    config = json.loads(json.dumps(model.get_config()))  # as train.py writes config.json
    assert config["feature_config"] == FEATURES.to_dict() and config["class_names"] == ["a", "b", "c"]
    clone = cls.from_config(config)
    clone.build_for_frames()
    clone.set_weights(model.get_weights())
    log_mel, mask = padded_batch()
    features = {"log_mel": log_mel, "mask": mask}
    np.testing.assert_allclose(clone(features, training=False), model(features, training=False), atol=1e-6)
    if cls is ConvAutoencoder:
        np.testing.assert_allclose(clone.embed(features), model.embed(features), atol=1e-6)


# -- padding ------------------------------------------------------------------------------


def test_tile_padding_is_the_identity_on_evaluation_batches(data_dir):
    # Batches group clips of one padded length: the clip of 50 frames is tile-padded to 64.
    features = next(features for features, _ in data.evaluation_dataset(data_dir, "test", batch_size=3)
                    if features["log_mel"].shape[1] == 64)
    assert features["mask"].numpy().sum() == 50
    np.testing.assert_array_equal(tile_padding(features["log_mel"], features["mask"]), features["log_mel"])
    log_mel, mask = padded_batch()
    refilled = tile_padding(log_mel, mask).numpy()
    np.testing.assert_array_equal(refilled[0, 20:40], log_mel[0, :20])
    np.testing.assert_array_equal(refilled[1], log_mel[1])


def test_masked_max_skips_windows_that_are_all_padding():
    mask = np.zeros((1, 48), np.float32)
    mask[0, :17] = 1.0  # windows 0 and 1 hold real frames, window 2 does not
    pooled = pooled_mask(mask, 16)
    np.testing.assert_array_equal(pooled, [[1.0, 1.0, 0.0]])
    values = np.array([[[1.0, -3.0], [2.0, -4.0], [9.0, 9.0]]], np.float32)  # [B, T/16, C]
    np.testing.assert_array_equal(masked_max_over_time(values, pooled), [[2.0, -3.0]])


@pytest.mark.parametrize("cls", [DirectClassifier, ConvAutoencoder])
def test_padded_frames_do_not_change_predictions(cls):
    model = small_model(cls)
    if cls is ConvAutoencoder:
        model.cluster_centres.assign(np.random.default_rng(0).standard_normal(model.cluster_centres.shape) * 0.01)
        outputs = {"embed": model.embed, "predict_clusters": model.predict_clusters}
    else:
        outputs = {"logits": lambda f: model(f, training=False), "predict_classes": model.predict_classes}
    log_mel, mask = padded_batch()
    changed = with_new_padding(log_mel, mask)
    for name, output in outputs.items():
        np.testing.assert_allclose(output({"log_mel": changed, "mask": mask}),
                                   output({"log_mel": log_mel, "mask": mask}), atol=1e-6, err_msg=name)
    # The same change where the mask says the frames are real does change the output.
    first = list(outputs.values())[0]
    ones = np.ones_like(mask)
    assert np.abs(first({"log_mel": changed, "mask": ones}) - first({"log_mel": log_mel, "mask": ones})).max() > 1e-3


@pytest.mark.parametrize("cls", [DirectClassifier, ConvAutoencoder])
def test_windows_of_padding_only_do_not_vote(cls):
    """A 16-frame clip padded to 96 frames gives the output it gives padded to `short`.

    Its one real window sees the frames up to 15 (direct) or 30 (autoencoder) past it,
    all inside `short`: only the windows made entirely of (tiled) padding differ.
    """
    model = small_model(cls)
    if cls is DirectClassifier:
        # 32, not 48: there every window of padding is like one at 96 (the clip repeats), so
        # a max over all of them would agree too.
        short, output = 32, (lambda f: model(f, training=False))
    else:
        short, output = 48, model.embed
    clip = np.random.default_rng(3).random((1, 16, NUM_MELS)).astype(np.float32)

    def padded_to(num_frames, mask_padding=True):
        mask = np.zeros((1, num_frames), np.float32)
        mask[:, : 16 if mask_padding else num_frames] = 1.0
        return {"log_mel": np.tile(clip, (1, num_frames // 16, 1)), "mask": mask}

    np.testing.assert_allclose(output(padded_to(96)), output(padded_to(short)), atol=1e-6)
    # Counted as real, the windows of padding change the output.
    assert np.abs(output(padded_to(96, False)) - output(padded_to(short, False))).max() > 1e-4


def test_reconstruction_error_counts_only_real_frames():
    rng = np.random.default_rng(0)
    reconstruction, target = rng.random((2, 32, NUM_MELS)), rng.random((2, 32, NUM_MELS))
    mask = np.ones((2, 32))
    mask[1, 10:] = 0.0
    expected = [np.mean((reconstruction[0] - target[0]) ** 2), np.mean((reconstruction[1, :10] - target[1, :10]) ** 2)]
    errors = masked_reconstruction_error(tf.constant(reconstruction), tf.constant(target), tf.constant(mask))
    np.testing.assert_allclose(errors, expected, rtol=1e-6)


# -- K-means ------------------------------------------------------------------------------


def three_blobs(dimension, per_blob=20, seed=0):
    """Points around three far-apart means in R^dimension, and the blob of each point."""
    rng = np.random.default_rng(seed)
    means = 4.0 * rng.standard_normal((3, dimension))
    blobs = np.repeat(np.arange(3), per_blob)
    rng.shuffle(blobs)
    return means[blobs] + 0.1 * rng.standard_normal((len(blobs), dimension)), blobs, means


def test_fit_clusters_recovers_well_separated_blobs():
    model = small_model(ConvAutoencoder)
    points, blobs, means = three_blobs(model.embedding_size)
    labels = model.fit_clusters(points, seed=0)
    centres = model.cluster_centres.numpy()
    predicted = nearest_centre(tf.constant(points, tf.float32), tf.constant(centres)).numpy()
    np.testing.assert_array_equal(predicted, labels)
    # One cluster per blob, and each centre on its blob's mean.
    cluster_of_blob = [np.unique(predicted[blobs == b]) for b in range(3)]
    assert all(len(c) == 1 for c in cluster_of_blob)
    cluster_of_blob = np.concatenate(cluster_of_blob)
    assert sorted(cluster_of_blob) == [0, 1, 2]
    np.testing.assert_allclose(centres[cluster_of_blob], means, atol=0.1)


def test_predict_clusters_picks_the_nearest_stored_centre():
    model = small_model(ConvAutoencoder)
    log_mel, mask = padded_batch()
    third = np.random.default_rng(2).random((1, 96, NUM_MELS)).astype(np.float32)
    features = {"log_mel": np.concatenate([log_mel, third]), "mask": np.concatenate([mask, np.ones((1, 96))])}
    embeddings = model.embed(features).numpy()
    model.cluster_centres.assign(embeddings[[2, 0, 1]])  # clip 0 is centre 1, clip 1 centre 2, clip 2 centre 0
    np.testing.assert_array_equal(model.predict_clusters(features), [1, 2, 0])


def test_checkpoints_keep_the_cluster_centres(tmp_path):
    model = small_model(ConvAutoencoder)
    points, _, _ = three_blobs(model.embedding_size)
    model.fit_clusters(points, seed=0)
    path = str(tmp_path / "latest.weights.h5")
    model.save_weights(path)
    restored = ConvAutoencoder.from_config(json.loads(json.dumps(model.get_config())))
    restored.build_for_frames()
    assert not np.any(restored.cluster_centres.numpy())
    restored.load_weights(path)
    np.testing.assert_array_equal(restored.cluster_centres.numpy(), model.cluster_centres.numpy())
    log_mel, mask = padded_batch()
    features = {"log_mel": log_mel, "mask": mask}
    np.testing.assert_array_equal(restored.predict_clusters(features), model.predict_clusters(features))


# -- selection on validation accuracy and the CPU budget (amych_tf.baselines.selection) ------


def test_cluster_accuracy_maps_clusters_to_the_training_majority(data_dir):
    from amych_tf.baselines import selection

    model = small_model(ConvAutoencoder)
    splits = [data.evaluation_dataset(data_dir, split, batch_size=8) for split in ("train", "validation")]
    accuracy = selection.cluster_accuracy(model, *splits, seed=0)
    # The same number by hand: K-means on the train embeddings, majority mapping, nearest centre.
    from amych_tf import metrics

    train_embeddings, train_labels = selection.embeddings_and_labels(model, splits[0])
    mapping = metrics.majority_mapping(train_labels, model.fit_clusters(train_embeddings, seed=0), NUM_CLASSES)
    validation_embeddings, validation_labels = selection.embeddings_and_labels(model, splits[1])
    predictions = mapping[nearest_centre(tf.constant(validation_embeddings), model.cluster_centres).numpy()]
    assert accuracy == pytest.approx(np.mean(predictions == validation_labels))


def test_clustering_selection_logs_and_saves_only_improvements(data_dir, tmp_path, monkeypatch):
    from amych_tf.baselines import selection

    model = small_model(ConvAutoencoder)
    scores = iter([0.5, 0.25, 0.75, 0.75])
    monkeypatch.setattr(selection, "cluster_accuracy", lambda *args, **kwargs: next(scores))
    path = str(tmp_path / "best.weights.h5")
    callback = selection.ClusteringSelection(None, None, path)
    callback.set_model(model)
    saved = []
    monkeypatch.setattr(model, "save_weights", lambda target: saved.append(target))
    for epoch in range(4):
        logs = {}
        callback.on_epoch_end(epoch, logs)
        assert logs[selection.CLUSTER_ACCURACY] in (0.5, 0.25, 0.75)
    assert saved == [path, path] and callback.best_epoch == 3 and callback.best == 0.75  # a tie keeps epoch 3


def test_best_validation_breaks_accuracy_ties_on_validation_loss(tmp_path, monkeypatch):
    """A saturated validation split: equal accuracy, the lower loss wins; a later equal loss does not."""
    from amych_tf.baselines import selection

    model = small_model(ConvAutoencoder)
    path = str(tmp_path / "best.weights.h5")
    callback = selection.BestValidation(path)
    callback.set_model(model)
    saved = []
    monkeypatch.setattr(model, "save_weights", lambda target: saved.append(target))
    epochs = [{"val_accuracy": 0.9, "val_loss": 0.5}, {"val_accuracy": 1.0, "val_loss": 0.4},
              {"val_accuracy": 1.0, "val_loss": 0.2}, {"val_accuracy": 1.0, "val_loss": 0.2},
              {"val_accuracy": 0.95, "val_loss": 0.01}, {}]  # the last epoch had no validation
    kept = []
    for epoch, logs in enumerate(epochs):
        callback.on_epoch_end(epoch, logs)
        kept.append(callback.best_epoch)
    assert kept == [1, 2, 3, 3, 3, 3] and len(saved) == 3
    assert (callback.best, callback.best_tie_breaker, callback.epochs_run) == (1.0, 0.2, 6)


def test_cpu_budget_stops_training_once_the_process_has_used_it():
    import time

    from amych_tf.baselines import selection

    class Stoppable:
        stop_training = False

    for seconds, stops in [(time.process_time() + 1e6, False), (0.0, True)]:
        target = Stoppable()
        callback = selection.CPUBudget(seconds)
        callback.set_model(target)
        callback.on_epoch_end(4)
        assert target.stop_training is stops and callback.epochs_run == 5
