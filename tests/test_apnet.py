"""APNet baseline: its formulas against NumPy, pooling masks, training, windows, clusters, serialisation."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from amych_tf import data
from amych_tf.baselines import apnet
from amych_tf.baselines.apnet import APNet
from amych_tf.spectral import FeatureConfig
from tests.helpers import make_prepared_dir

# make_prepared_dir's feature parameters with 16 mels.
FEATURES = FeatureConfig(sample_rate=16000, n_fft=1024, hop_length=512, n_mels=16)
FRAMES = 32
NUM_CLASSES = 3
LATENT_PROTOTYPES = 6


def tiny_model(**kwargs):
    model = APNet(FEATURES, NUM_CLASSES, class_names=["a", "b", "c"], num_frames=FRAMES,
                  num_prototypes_latent=LATENT_PROTOTYPES, filters=4, **kwargs)
    model.build_for_frames()
    return model


def class_band_log_mel(clip_index, num_frames, num_mels):
    """Clip i (label i % 3): low noise plus a loud band of 4 mel bins that depends on the label."""
    rng = np.random.default_rng(clip_index)
    log_mel = 0.1 + 0.05 * rng.random((num_frames, num_mels))
    label = clip_index % NUM_CLASSES
    log_mel[:, 4 * label + 2:4 * label + 6] += 0.6
    return log_mel.astype(np.float32)


def random_clips(num_clips, num_frames, seed=0):
    return np.random.default_rng(seed).random((num_clips, num_frames, FEATURES.n_mels)).astype(np.float32)


def attract_prototypes(model, log_mel):
    """Set prototype j to the latent of window j (+ a little noise) so that similarities are far from 0."""
    latent = model(log_mel, return_details=True)["latent"].numpy()[:LATENT_PROTOTYPES]
    noise = 0.01 * np.random.default_rng(1).standard_normal(latent.shape)
    model.prototype_layer.prototypes.assign((latent + noise).astype(np.float32))
    return latent


# -- the formulas against NumPy -------------------------------------------------------------


def numpy_distances(z, prototypes):
    # d_ij[f] = sum over latent time and channels of (z_i - p_j)^2
    return ((z[:, None] - prototypes[None]) ** 2).sum(axis=(2, 4))


def numpy_similarity(distances, frequency_weights):
    return (frequency_weights[None] * np.exp(-distances)).sum(axis=-1)


def numpy_prototype_loss(distances):
    mean_d = distances.mean(axis=-1)  # D_ij [examples, prototypes]
    return mean_d.min(axis=1).mean() + mean_d.min(axis=0).mean()


def numpy_cross_entropy(logits, labels):
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -log_softmax[np.arange(len(labels)), labels]


def numpy_reconstruction(target, reconstruction):
    return ((target - reconstruction) ** 2).mean(axis=(1, 2))


def test_distances_and_frequency_weighted_similarity_match_numpy():
    rng = np.random.default_rng(0)
    z = 0.3 * rng.random((3, 4, 5, 2))
    prototypes = 0.3 * rng.random((6, 4, 5, 2))
    frequency_weights = rng.standard_normal((6, 5))
    distances = apnet.prototype_distances(tf.constant(z, tf.float32), tf.constant(prototypes, tf.float32)).numpy()
    np.testing.assert_allclose(distances, numpy_distances(z, prototypes), rtol=1e-5, atol=1e-6)
    expected = numpy_similarity(numpy_distances(z, prototypes), frequency_weights)
    similarities = apnet.similarity(tf.constant(distances), tf.constant(frequency_weights, tf.float32)).numpy()
    np.testing.assert_allclose(similarities, expected, rtol=1e-5)
    # The weights matter: uniform weights (H = 1/F', the initial kernel) give another answer.
    assert not np.allclose(similarities, numpy_similarity(numpy_distances(z, prototypes), np.full((6, 5), 0.2)),
                           rtol=1e-3)


def test_prototype_cross_entropy_reconstruction_and_total_losses_match_numpy():
    rng = np.random.default_rng(1)
    distances = 5.0 * rng.random((4, 7, 3))  # 4 examples, 7 prototypes: the two min terms differ
    logits = rng.standard_normal((4, 3))
    labels = np.array([0, 2, 1, 2])
    target, reconstruction = rng.uniform(-1, 1, (2, 4, 8, 5))
    as_tensors = [tf.constant(value, tf.float32) for value in (logits, labels, distances, target, reconstruction)]
    as_tensors[1] = tf.constant(labels, tf.int32)

    np.testing.assert_allclose(apnet.prototype_loss(as_tensors[2]).numpy(), numpy_prototype_loss(distances),
                               rtol=1e-6)
    np.testing.assert_allclose(apnet.cross_entropy(as_tensors[0], as_tensors[1]).numpy(),
                               numpy_cross_entropy(logits, labels), rtol=1e-5)
    np.testing.assert_allclose(apnet.reconstruction_error(as_tensors[3], as_tensors[4]).numpy(),
                               numpy_reconstruction(target, reconstruction), rtol=1e-5)
    for alpha, beta, gamma in [(2.0, 1.0, 1.0), (0.5, 3.0, 0.25)]:
        expected = (alpha * numpy_cross_entropy(logits, labels).mean() + beta * numpy_prototype_loss(distances)
                    + gamma * numpy_reconstruction(target, reconstruction).mean())
        total = apnet.total_loss(*as_tensors, alpha=alpha, beta=beta, gamma=gamma).numpy()
        np.testing.assert_allclose(total, expected, rtol=1e-5)


def test_model_loss_and_metrics_match_numpy_on_its_own_outputs():
    model = tiny_model(alpha=2.0, beta=1.0, gamma=1.0)
    log_mel = random_clips(8, FRAMES)
    labels = np.arange(8) % NUM_CLASSES
    attract_prototypes(model, log_mel)
    frequency_weights = np.random.default_rng(2).standard_normal((LATENT_PROTOTYPES, FEATURES.n_mels // 4))
    model.prototype_layer.frequency_weights.assign(frequency_weights.astype(np.float32))
    outputs = model(log_mel, return_details=True)
    z = outputs["latent"].numpy().astype(np.float64)
    prototypes = model.prototype_layer.prototypes.numpy().astype(np.float64)

    distances = numpy_distances(z, prototypes)
    similarities = numpy_similarity(distances, frequency_weights)
    assert similarities.max() > 0.1  # the prototypes were pulled close: CE depends on them
    logits = similarities @ model.classifier.kernel.numpy()
    np.testing.assert_allclose(outputs["similarities"].numpy(), similarities, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(outputs["logits"].numpy(), logits, rtol=1e-4, atol=1e-6)
    ce = numpy_cross_entropy(logits, labels)
    rec = numpy_reconstruction(2.0 * log_mel - 1.0, outputs["reconstruction"].numpy())
    prototype = numpy_prototype_loss(distances)
    expected = {"loss": 2.0 * ce.mean() + prototype + rec.mean(), "ce": ce.mean(), "rec": rec.mean(),
                "prototype": prototype, "accuracy": np.mean(logits.argmax(1) == labels)}
    logs = model.test_step((tf.constant(log_mel), tf.constant(labels, tf.int32)))
    for name, value in expected.items():
        np.testing.assert_allclose(float(logs[name]), value, rtol=1e-4, err_msg=name)
    # The loss train_step differentiates (one device, no strategy) is the same number.
    replica_loss = model.replica_loss(model.compute_losses(outputs, tf.constant(labels, tf.int32)))
    np.testing.assert_allclose(float(replica_loss), expected["loss"], rtol=1e-4)


# -- the autoencoder --------------------------------------------------------------------------


def test_max_pool_masks_mark_exactly_the_maximum_of_each_window():
    x = np.random.default_rng(3).standard_normal((2, 6, 8, 3)).astype(np.float32)
    pooled, mask = apnet.max_pool_with_mask(tf.constant(x))
    windows = x.reshape(2, 3, 2, 4, 2, 3).transpose(0, 1, 3, 5, 2, 4).reshape(2, 3, 4, 3, 4)
    winner = windows.argmax(axis=-1)
    expected = np.zeros_like(windows)
    np.put_along_axis(expected, winner[..., None], 1.0, axis=-1)
    expected = expected.reshape(2, 3, 4, 3, 2, 2).transpose(0, 1, 4, 2, 5, 3).reshape(x.shape)
    np.testing.assert_array_equal(mask.numpy(), expected)
    np.testing.assert_array_equal(pooled.numpy(), windows.max(axis=-1))
    # Unpooling puts each maximum back where it was and zeros elsewhere.
    np.testing.assert_array_equal(apnet.masked_upsample(pooled, mask).numpy(), x * expected)
    # Ties (a constant window) mark every tied position, as the authors' greater_equal.
    _, tied_mask = apnet.max_pool_with_mask(tf.ones([1, 2, 2, 1]))
    np.testing.assert_array_equal(tied_mask.numpy(), np.ones([1, 2, 2, 1]))


def test_decoder_uses_the_masks_of_the_encoder():
    model = tiny_model()
    log_mel = tf.constant(random_clips(2, FRAMES))
    latent, masks = model.encoder(apnet.to_signed(log_mel))
    assert latent.shape == (2, FRAMES // 4, FEATURES.n_mels // 4, 4)
    assert [m.shape for m in masks] == [(2, FRAMES, 16, 4), (2, FRAMES // 2, 8, 4)]
    reconstruction = model.decoder(latent, masks).numpy()
    assert reconstruction.shape == (2, FRAMES, FEATURES.n_mels) and np.abs(reconstruction).max() < 1.0
    swapped = model.decoder(latent, (masks[0][::-1], masks[1][::-1])).numpy()  # the other example's masks
    assert not np.allclose(swapped, reconstruction, atol=1e-3)


# -- training -------------------------------------------------------------------------------


def test_fit_lowers_the_loss_and_validates_on_full_clips(tmp_path):
    data_dir = str(tmp_path / "data")
    make_prepared_dir(data_dir, {"train": [40] * 24, "validation": [20, 45, 70, 33, 64, 16]},
                      num_mels=FEATURES.n_mels, spectrogram=class_band_log_mel)
    train = data.training_dataset(data_dir, batch_size=8, train_frames=FRAMES, seed=0, augment=False)
    validation = data.evaluation_dataset(data_dir, "validation", batch_size=4)
    model = tiny_model()
    optimizer = APNet.default_optimizer(learning_rate=1e-2)
    model.compile(optimizer=optimizer)
    before = model.evaluate(validation, verbose=0, return_dict=True)
    history = model.fit(train, epochs=6, validation_data=validation, verbose=0).history
    assert set(history) >= {"loss", "accuracy", "ce", "prototype", "rec", "val_loss", "val_accuracy"}
    assert np.all(np.isfinite(history["loss"])) and np.all(np.isfinite(history["val_loss"]))
    assert history["loss"][-1] < 0.7 * history["loss"][0]
    assert history["val_loss"][-1] < 0.7 * before["loss"]


def test_default_optimizer_is_plain_adam_at_the_papers_learning_rate():
    optimizer = APNet.default_optimizer()
    assert type(optimizer).__name__ == "Adam"
    assert float(optimizer.learning_rate) == pytest.approx(1e-3)
    assert optimizer.global_clipnorm is None and optimizer.clipnorm is None and optimizer.clipvalue is None


def test_weighted_sum_kernel_keeps_unit_norm_columns_after_each_update():
    model = tiny_model()
    model.compile(optimizer=APNet.default_optimizer())
    log_mel = random_clips(8, FRAMES)
    attract_prototypes(model, log_mel)
    batch = (tf.constant(log_mel), tf.constant(np.arange(8) % NUM_CLASSES, tf.int32))
    model.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)
    kernel = model.prototype_layer.frequency_weights.numpy()
    # UnitNorm(axis=0): every latent frequency's column over the prototypes has norm 1.
    np.testing.assert_allclose(np.linalg.norm(kernel, axis=0), 1.0, rtol=1e-5)


def test_min_max_scaling_maps_the_train_range_to_minus_one_one():
    np.testing.assert_allclose(apnet.to_signed(tf.constant([0.2, 0.5, 0.8]), 0.2, 0.8).numpy(), [-1.0, 0.0, 1.0],
                               atol=1e-6)
    values = tf.constant([-0.7, 0.1, 0.9])
    np.testing.assert_allclose(apnet.to_signed(apnet.from_signed(values, 0.1, 0.6), 0.1, 0.6).numpy(), values,
                               atol=1e-6)
    # The model's reconstruction target is the input on that scale.
    model = tiny_model(input_min=0.1, input_max=0.6)
    log_mel = random_clips(2, FRAMES)
    np.testing.assert_allclose(model.scale(tf.constant(log_mel)).numpy(), 2.0 * ((log_mel - 0.1) / 0.5 - 0.5), atol=1e-6)
    with pytest.raises(ValueError, match="input_max"):
        tiny_model(input_min=0.5, input_max=0.5)


# -- interface, windows and serialisation ---------------------------------------------------


def test_config_round_trip_and_interface_attributes():
    model = tiny_model(alpha=3.0, gamma=0.5, input_min=0.1, input_max=0.9)
    assert model.mode == "supervised" and model.num_prototypes == NUM_CLASSES
    assert model.prototype_layer.prototypes.shape == (LATENT_PROTOTYPES, FRAMES // 4, FEATURES.n_mels // 4, 4)
    prototypes = model.prototype_layer.prototypes.numpy()
    # Keras' 'uniform' initialiser: U(-0.05, 0.05).
    assert prototypes.min() >= -0.05 and prototypes.max() <= 0.05 and prototypes.std() > 0.02
    np.testing.assert_allclose(model.prototype_layer.frequency_weights.numpy(), 1.0 / (FEATURES.n_mels // 4))
    assert (APNet(FEATURES, NUM_CLASSES).alpha, APNet(FEATURES, NUM_CLASSES).beta,
            APNet(FEATURES, NUM_CLASSES).gamma) == (10.0, 5.0, 5.0)
    assert model.classifier.bias is None
    config = model.get_config()
    assert config["feature_config"] == FEATURES.to_dict() and config["num_prototypes_latent"] == LATENT_PROTOTYPES
    clone = APNet.from_config(config)
    assert clone.get_config() == config
    clone.build_for_frames()
    clone.set_weights(model.get_weights())
    log_mel = random_clips(2, FRAMES)
    np.testing.assert_array_equal(clone(log_mel)["logits"].numpy(), model(log_mel)["logits"].numpy())
    import keras

    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert isinstance(restored, APNet) and restored.get_config() == config


def padded_batch(lengths, padded_length, seed=0):
    """Clips of `lengths` real frames, tile-padded to `padded_length` as the evaluation pipeline pads them."""
    clips = random_clips(len(lengths), max(lengths), seed)
    log_mel, mask = data.tile_pad(tf.constant(clips), tf.constant(lengths), 16)
    log_mel = tf.concat([log_mel, tf.zeros([len(lengths), padded_length - log_mel.shape[1], FEATURES.n_mels])], 1)
    mask = tf.concat([mask, tf.zeros([len(lengths), padded_length - mask.shape[1]])], 1)
    return clips, log_mel.numpy(), mask.numpy()


def test_predictions_ignore_padded_frames_and_average_the_windows_of_a_clip():
    model = tiny_model()
    lengths = [20, 45, 70]
    clips, log_mel, mask = padded_batch(lengths, 80)
    # Prototypes near windows of these clips, so that similarities are far from 0 and react to the input.
    attract_prototypes(model, np.stack([clips[b][(np.arange(FRAMES) + offset) % n]
                                        for b, n in enumerate(lengths) for offset in (0, 16)]))
    features = {"log_mel": log_mel, "mask": mask, "path": tf.constant(["x"] * 3)}
    embeddings = model.embed(features).numpy()
    classes = model.predict_classes(features).numpy()
    assert embeddings.shape == (3, LATENT_PROTOTYPES) and classes.dtype == np.int32

    garbage = np.where(mask[..., None] > 0, log_mel, np.random.default_rng(9).random(log_mel.shape) * 5.0)
    longer = np.concatenate([garbage, np.ones([3, 48, FEATURES.n_mels], np.float32)], axis=1)
    longer_mask = np.concatenate([mask, np.zeros([3, 48], np.float32)], axis=1)
    for changed, changed_mask in [(garbage, mask), (longer, longer_mask)]:
        np.testing.assert_allclose(model.embed({"log_mel": changed, "mask": changed_mask}).numpy(), embeddings,
                                   rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(model.predict_classes({"log_mel": changed, "mask": changed_mask}).numpy(),
                                      classes)
    # A real frame does matter.
    touched = log_mel.copy()
    touched[2, 3] += 0.5
    assert not np.allclose(model.embed({"log_mel": touched, "mask": mask}).numpy()[2], embeddings[2], rtol=1e-4)

    # Clip 2 (70 frames) is three 32-frame windows of its frames tiled: (k 32 + t) mod 70.
    windows = np.stack([clips[2][(32 * k + np.arange(FRAMES)) % 70] for k in range(3)])
    np.testing.assert_allclose(embeddings[2], model.embed(windows).numpy().mean(axis=0), rtol=1e-5, atol=1e-7)
    logits = model(features)["logits"].numpy()
    np.testing.assert_allclose(logits[2], model(windows)["logits"].numpy().mean(axis=0), rtol=1e-5, atol=1e-6)

    # The same under XLA, with the batch length unknown when traced.
    compiled = tf.function(model.predict_classes, jit_compile=True, reduce_retracing=True)
    np.testing.assert_array_equal(compiled({"log_mel": log_mel, "mask": mask}).numpy(), classes)


def test_fit_clusters_survives_save_and_load_weights(tmp_path):
    model = tiny_model()
    rng = np.random.default_rng(4)
    centres_true = 3.0 * rng.standard_normal((NUM_CLASSES, LATENT_PROTOTYPES))
    embeddings = np.concatenate([c + 0.1 * rng.standard_normal((10, LATENT_PROTOTYPES)) for c in centres_true])
    assignment = model.fit_clusters(embeddings, seed=0)
    from sklearn.cluster import KMeans

    expected = KMeans(n_clusters=NUM_CLASSES, n_init=10, random_state=0).fit(embeddings)
    np.testing.assert_array_equal(assignment, expected.labels_)
    assert assignment.dtype == np.int32 and len(set(assignment[::10])) == NUM_CLASSES  # one cluster per blob
    np.testing.assert_allclose(model.cluster_centres.numpy(), expected.cluster_centers_, rtol=1e-6)
    with pytest.raises(ValueError, match="embeddings must be"):
        model.fit_clusters(embeddings[:, :2], seed=0)

    path = str(tmp_path / "apnet.weights.h5")
    model.save_weights(path)
    restored = APNet.from_config(model.get_config())
    restored.build_for_frames()
    restored.load_weights(path)
    np.testing.assert_array_equal(restored.cluster_centres.numpy(), model.cluster_centres.numpy())

    # predict_clusters: the nearest stored centre of the embedding.
    log_mel = random_clips(6, FRAMES, seed=6)
    restored.cluster_centres.assign(restored.embed(log_mel).numpy()[[0, 2, 4]])
    assignment = restored.predict_clusters(log_mel).numpy()
    np.testing.assert_array_equal(assignment[[0, 2, 4]], [0, 1, 2])


def test_decode_prototypes_uses_the_masks_of_the_most_similar_example():
    model = tiny_model()
    examples = random_clips(LATENT_PROTOTYPES, FRAMES, seed=7)
    spectra = model.decode_prototypes(examples, batch_size=4)
    assert spectra.shape == (LATENT_PROTOTYPES, FRAMES, FEATURES.n_mels)
    assert np.all(np.isfinite(spectra)) and spectra.min() >= 0.0 and spectra.max() <= 1.0

    # Prototype j set to the latent of example (j + 1) mod M: it decodes to that example's reconstruction.
    latent = model(examples, return_details=True)["latent"].numpy()
    order = (np.arange(LATENT_PROTOTYPES) + 1) % LATENT_PROTOTYPES
    model.prototype_layer.prototypes.assign(latent[order])
    spectra, nearest = model.decode_prototypes({"log_mel": examples}, batch_size=4, return_nearest=True)
    np.testing.assert_array_equal(nearest, order)
    reconstruction = model(examples, return_details=True)["reconstruction"].numpy()
    np.testing.assert_allclose(spectra, 0.5 * (reconstruction[order] + 1.0), rtol=1e-5, atol=1e-6)


def test_decode_prototypes_reads_a_split_batch_by_batch(tmp_path):
    # Clips of several lengths, in evaluation batches (padded per batch, masked): the same
    # spectra and nearest clips as the whole split in one padded array.
    lengths = {"train": [20, 32, 40, 24, 64, 36, 32], "validation": [], "test": []}
    info = make_prepared_dir(tmp_path / "data", lengths, num_mels=FEATURES.n_mels, spectrogram=class_band_log_mel)
    split = data.evaluation_dataset(str(tmp_path / "data"), "train", batch_size=3, info=info, with_metadata=True)
    model = tiny_model()
    spectra, nearest = model.decode_prototypes(split, return_nearest=True)
    # Batches group clips by padded length: nearest counts clips as they come; "index" is their file order.
    file_index = np.concatenate([features["index"].numpy() for features, _ in split])
    nearest = file_index[nearest]

    clips = [class_band_log_mel(i, n, FEATURES.n_mels) for i, n in enumerate(lengths["train"])]
    padded = np.stack([np.resize(c, (64, FEATURES.n_mels)) for c in clips])
    mask = (np.arange(64)[None] < np.array(lengths["train"])[:, None]).astype(np.float32)
    expected, expected_nearest = model.decode_prototypes({"log_mel": padded, "mask": mask}, return_nearest=True)
    np.testing.assert_array_equal(nearest, expected_nearest)
    np.testing.assert_allclose(spectra, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="at least one example"):
        model.decode_prototypes(split.take(0))


@pytest.mark.slow
def test_listen_writes_apnet_prototypes_named_by_their_class(tmp_path):
    import soundfile

    info = make_prepared_dir(tmp_path / "data", {"train": [32, 40, 48], "validation": [], "test": []},
                             num_mels=FEATURES.n_mels, spectrogram=class_band_log_mel)
    model = tiny_model()
    kernel = np.zeros((LATENT_PROTOTYPES, NUM_CLASSES), np.float32)
    kernel[np.arange(LATENT_PROTOTYPES), [2, 0, 1, 1, 0, 2]] = 1.0
    model.classifier.kernel.assign(kernel)
    np.testing.assert_array_equal(model.prototype_classes(), [2, 0, 1, 1, 0, 2])
    model_dir = tmp_path / "run"
    os.makedirs(model_dir / "checkpoints")
    model.save_weights(str(model_dir / "checkpoints" / "latest.weights.h5"))
    (model_dir / "config.json").write_text(json.dumps(
        {"model_name": "apnet", "model": model.get_config(), "dataset": {"data_dir": str(tmp_path / "data")}}))

    command = [sys.executable, "-m", "amych_tf.listen", f"--model_dir={model_dir}", f"--out_dir={tmp_path / 'out'}",
               "--griffin_lim_iters=4"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    names = sorted(os.listdir(tmp_path / "out" / "prototypes"))
    assert names == sorted(f"{j}-{'abc'[k]}.wav" for j, k in enumerate([2, 0, 1, 1, 0, 2]))
    audio, rate = soundfile.read(str(tmp_path / "out" / "prototypes" / names[0]))
    assert rate == info.features.sample_rate and len(audio) >= FEATURES.num_samples(FRAMES) - FEATURES.n_fft
    assert np.all(np.isfinite(audio)) and np.abs(audio).max() > 0.1
    assert os.path.getsize(tmp_path / "out" / "prototype_gallery.png") > 1000

    refused = subprocess.run(command + [f"--inputs={tmp_path / 'x.wav'}"], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "APNet does not reconstruct" in refused.stderr


# -- prototype classes and refinement (the APNet paper's sections 5.1.2 and 5.2.1) -----------


def separated_prototypes(model):
    """Prototypes 0, 1 (class 0) and 2, 3 (class 1) near-duplicates; 4 (class 2) and 5 (class 0) apart.

    Constant latents 0, 0, 1, 1, 2, 3 (plus 1e-3 noise): across groups the distances
    (summed over latent time and channels) make exp(-d) ~ 0. Dense rows are one-hot.
    """
    shape = model.prototype_layer.prototypes.shape
    levels = np.array([0.0, 0.0, 1.0, 1.0, 2.0, 3.0])
    noise = 1e-3 * np.random.default_rng(5).standard_normal(shape)
    model.prototype_layer.prototypes.assign((levels[:, None, None, None] + noise).astype(np.float32))
    classes = np.array([0, 0, 1, 1, 2, 0])
    model.classifier.kernel.assign(np.eye(NUM_CLASSES, dtype=np.float32)[classes])
    return classes


def test_prototype_classes_come_from_classifying_the_prototypes():
    model = tiny_model()
    classes = separated_prototypes(model)
    np.testing.assert_array_equal(model.prototype_classes(), classes)
    probabilities = model.prototype_class_probabilities()
    assert probabilities.shape == (LATENT_PROTOTYPES, NUM_CLASSES)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_refinement_removes_one_of_each_same_class_near_duplicate_and_keeps_the_class_weight():
    model = tiny_model()
    separated_prototypes(model)
    refined, kept = model.refined_copy()
    # Class order 0, 1, 5, 2, 3, 4; the threshold is about 1.1 (min ~0 + mean 2.3 / 2): 0 goes
    # (1 kept), 2 goes (3 kept); 5 and 4 are 1 from a prototype of another class and stay.
    np.testing.assert_array_equal(kept, [1, 5, 3, 4])
    assert refined.num_prototypes_latent == 4 and refined.get_config()["num_prototypes_latent"] == 4
    np.testing.assert_array_equal(refined.prototype_layer.prototypes.numpy(),
                                  model.prototype_layer.prototypes.numpy()[kept])
    np.testing.assert_array_equal(refined.prototype_layer.frequency_weights.numpy(),
                                  model.prototype_layer.frequency_weights.numpy()[kept])
    # Class 0 lost one of three unit weights (x 3/2), class 1 one of two (x 2).
    np.testing.assert_allclose(refined.classifier.kernel.numpy(),
                               [[1.5, 0, 0], [1.5, 0, 0], [0, 2, 0], [0, 0, 1]])
    for source, target in ((model.encoder, refined.encoder), (model.decoder, refined.decoder)):
        for a, b in zip(source.get_weights(), target.get_weights()):
            np.testing.assert_array_equal(a, b)
    log_mel = random_clips(3, FRAMES)
    assert refined(log_mel)["logits"].shape == (3, NUM_CLASSES)
