"""PlayablePrototypes: architecture, eqs. 6-9 against NumPy, training, optimizer groups, curriculum, reassignment."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from amych_tf import initialization, model as model_lib
from amych_tf.training import callbacks
from amych_tf.training.curriculum import BETA_LEARNING_RATE_SCALE, WAIT, WARMUP, WARMUP_START
from amych_tf.training.curriculum import stages as curriculum_stages
from amych_tf.model import PlayablePrototypes
from amych_tf.optimizers import GroupedAdamW
from amych_tf.spectral import FeatureConfig

TINY = FeatureConfig(sample_rate=8000, n_fft=256, hop_length=128, n_mels=32)
FRAMES = 32


def tiny_model(mode="supervised", num_prototypes=4, **kwargs):
    model = PlayablePrototypes(TINY, num_prototypes, mode=mode, start_width=4, bottleneck_width=16,
                               decoder_width=8, **kwargs)
    model.build_for_frames(FRAMES)
    model.compile(optimizer=GroupedAdamW(model_lib.optimizer_groups(), learning_rate=1e-2), jit_compile=False)
    model.optimizer.build(model.trainable_variables)
    return model


def tiny_batches(num_examples=16, num_classes=4, seed=0, batch_size=8):
    """Class k: a spectral peak at bin 4 + 6k with random level; the mask cuts a few frames."""
    rng = np.random.default_rng(seed)
    labels = np.arange(num_examples) % num_classes
    log_mel = 0.1 + 0.02 * rng.random((num_examples, FRAMES, TINY.n_mels))
    for i, label in enumerate(labels):
        log_mel[i, :, 4 + 6 * label] += 0.5 + 0.2 * rng.random()
    mask = np.ones((num_examples, FRAMES), np.float32)
    mask[::3, -5:] = 0.0
    features = {"log_mel": log_mel.astype(np.float32), "mask": mask}
    return tf.data.Dataset.from_tensor_slices((features, labels.astype(np.int32))).batch(batch_size)


def enable_all(model):
    model.set_active_transformations(("gain", "pitch", "low", "high"))
    for name in model.optimizer.group_names:
        model.optimizer.set_group_scale(name, 1.0)


def test_parameter_count_matches_the_authors_architecture():
    model = PlayablePrototypes(FeatureConfig.preset("sol"), 33)
    model.build_for_frames(16)
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    assert trainable == 496_415  # docs/DESIGN.md, section 2.3
    model = PlayablePrototypes(FeatureConfig.preset("sol"), 128)
    model.build_for_frames(16)
    assert sum(int(np.prod(v.shape)) for v in model.trainable_variables) == 545_625  # paper: 545k


def test_reconstruction_errors_follow_eq_6_with_the_mask():
    model = tiny_model()
    enable_all(model)
    features, _ = next(iter(tiny_batches()))
    outputs = model(features, return_details=True)
    reconstructions = outputs["reconstructions"].numpy()
    assert reconstructions.shape == (8, FRAMES, 4, TINY.n_mels)
    for name in ("gain", "pitch_ratio", "low_cutoff", "low_slope", "high_cutoff", "high_slope"):
        assert outputs[name].shape == (8, FRAMES, 4)
    x, mask = features["log_mel"].numpy(), features["mask"].numpy()
    squared = ((x[:, :, None, :] - reconstructions) ** 2).mean(-1)  # [B, T, K]
    expected = (squared * mask[..., None]).sum(1) / mask.sum(1)[:, None]
    np.testing.assert_allclose(outputs["rec_errors"], expected, rtol=1e-5)
    # Padding frames do not count: changing them leaves L_rec unchanged... for the masked
    # mean; the encoder sees them, so compare with the transformations off.
    model.set_active_transformations(())
    changed = dict(features, log_mel=tf.where(features["mask"][..., None] > 0, features["log_mel"], 5.0))
    np.testing.assert_allclose(model(changed)["rec_errors"], model(features)["rec_errors"], rtol=1e-6)


def test_losses_follow_eqs_7_to_9():
    rng = np.random.default_rng(1)
    rec = rng.random((5, 4)).astype(np.float32)
    labels = np.array([0, 3, 1, 1, 2], np.int32)
    beta, num_bins = 2.5, 3  # the CE's logits are -beta * (L_rec summed over the F bins)
    np.testing.assert_allclose(model_lib.clustering_loss(rec), rec.min(1), rtol=1e-6)
    logits = -beta * num_bins * rec.astype(np.float64)
    log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    ce = -log_softmax[np.arange(5), labels]
    total, rec_y, ce_tf = model_lib.classification_loss(rec, labels, tf.constant(beta), 0.01, num_bins)
    np.testing.assert_allclose(ce_tf, ce, rtol=1e-5)
    np.testing.assert_allclose(rec_y, rec[np.arange(5), labels], rtol=1e-6)
    np.testing.assert_allclose(total, rec[np.arange(5), labels] + 0.01 * ce, rtol=1e-5)


@pytest.mark.parametrize("mode", ["supervised", "unsupervised"])
def test_loss_decreases_over_a_few_steps(mode):
    model = tiny_model(mode)  # prototypes start near 0.5, far from the data
    enable_all(model)
    losses = model.fit(tiny_batches(), epochs=8, verbose=0).history["loss"]
    assert losses[-1] < 0.5 * losses[0], losses


def test_optimizer_groups_scale_learning_and_weight_decay():
    model = tiny_model()
    optimizer = model.optimizer
    assert optimizer.group_of(model.prototypes) == "prototypes"
    assert optimizer.group_of(model.encoder.trainable_variables[0]) == "encoder"
    assert optimizer.group_of(model.pitch_decoder.output_conv.kernel) == "pitch_decoder"
    model.set_active_transformations(("gain", "pitch", "low", "high"))
    frozen = [v.numpy().copy() for v in model.pitch_decoder.trainable_variables]
    encoder_before = [v.numpy().copy() for v in model.encoder.trainable_variables]
    optimizer.set_group_scale("encoder", 1.0)
    optimizer.set_group_scale("gain_decoder", 1.0)
    model.fit(tiny_batches(), epochs=1, verbose=0)
    # scale 0: neither learns nor decays (the decoder's gradients are non-zero here)
    for before, variable in zip(frozen, model.pitch_decoder.trainable_variables):
        np.testing.assert_array_equal(before, variable.numpy())
    assert any(np.abs(b - v.numpy()).max() > 0 for b, v in zip(encoder_before, model.encoder.trainable_variables))
    with pytest.raises(ValueError, match="matches 0 optimizer groups"):
        bad = GroupedAdamW([("prototypes", r"prototypes$", 0.0, 1.0)])
        bad.build(model.trainable_variables)


def test_grouped_adamw_follows_adam_with_decoupled_decay_per_group():
    """Against NumPy: Adam (Kingma & Ba, Keras' epsilon outside the root) at lr * scale, decay lr * scale * wd."""
    rng = np.random.default_rng(0)
    starts = [rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(5,)).astype(np.float32)]
    variables = [keras.Variable(starts[0], name="dense_kernel"), keras.Variable(starts[1], name="proto")]
    optimizer = GroupedAdamW([("dense", r"dense_kernel$", 0.1, 0.5), ("proto", r"proto$", 0.0, 2.0)],
                             learning_rate=1e-2)
    expected = [w.astype(np.float64) for w in starts]
    moments = [[np.zeros_like(w), np.zeros_like(w)] for w in expected]
    for step in range(1, 5):
        gradients = [rng.normal(size=w.shape).astype(np.float32) for w in starts]
        optimizer.apply_gradients([(tf.constant(g), v) for g, v in zip(gradients, variables)])
        for w, (m, v), g, (scale, decay) in zip(expected, moments, gradients, [(0.5, 0.1), (2.0, 0.0)]):
            lr = 1e-2 * scale
            w -= w * decay * lr
            m += (g - m) * (1 - 0.9)
            v += (g * g - v) * (1 - 0.999)
            w -= lr * np.sqrt(1 - 0.999**step) / (1 - 0.9**step) * m / (np.sqrt(v) + 1e-7)
    for variable, w in zip(variables, expected):
        np.testing.assert_allclose(variable.numpy(), w, rtol=0, atol=2e-6)
    assert np.abs(variables[1].numpy() - starts[1]).min() > 1e-3  # the values did move


def scripted_curriculum(model, losses, batches_per_epoch=4, **kwargs):
    """Epochs of `batches_per_epoch` batches ending with the given losses (warm-ups last 4 batches)."""
    curriculum = callbacks.Curriculum(model.mode, learning_rate=1e-2, patience=2, warmup_steps=4, **kwargs)
    curriculum.set_model(model)
    curriculum.on_epoch_begin(0)
    stages = []
    for epoch, loss in enumerate(losses):
        for batch in range(batches_per_epoch):
            curriculum.on_train_batch_begin(batch)
        curriculum.on_epoch_end(epoch, {"loss": loss})
        stages.append(curriculum.stage)
        if model.stop_training:
            break
    return curriculum, stages


def test_curriculum_moves_through_its_stages_on_a_scripted_loss_history(tmp_path):
    model = tiny_model()
    # improves, then plateaus for 2 epochs -> next stage; best is reset at each stage
    losses = [1.0, 0.9, 0.95, 0.95] + [0.5, 0.6, 0.6] + [0.4, 0.41, 0.42] + [0.3, 0.3, 0.3] + [0.2, 0.3, 0.3] \
        + [0.1, 0.2, 0.2, 0.2, 0.2]
    curriculum, stages = scripted_curriculum(model, losses, checkpoint_dir=str(tmp_path))
    assert stages == ["raw"] * 3 + ["gain"] + ["gain"] * 2 + ["pitch"] + ["pitch"] * 2 + ["filters"] \
        + ["filters"] * 2 + ["ce"] + ["ce"] * 2 + ["lr_decay"] + ["lr_decay"] * 5
    assert model.stop_training  # the LR-decay stage waited 2 x patience = 4 epochs
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"stage-{i}-{s}.weights.h5" for i, s in enumerate(curriculum_stages("supervised"))]
    assert model.active_transformations == ("gain", "pitch", "low", "high")
    assert model.optimizer.get_group_scale("beta") == BETA_LEARNING_RATE_SCALE
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(1e-3)


def test_curriculum_patience_waits_for_the_end_of_the_warm_up():
    model = tiny_model()
    # One batch per epoch, warm-ups of 4 batches: a transformation stage's first 3
    # epochs end inside its warm-up and do not count, however flat the loss.
    losses = [1.0, 1.0, 1.0] + [1.0] * 3 + [0.9, 0.95, 0.95] + [0.95]
    _, stages = scripted_curriculum(model, losses, batches_per_epoch=1)
    # raw has no warm-up (ends after 2 flat epochs); gain: 3 warm-up epochs, then the best
    # loss 0.9 and two epochs without improvement; pitch starts its warm-up.
    assert stages == ["raw"] * 2 + ["gain"] + ["gain"] * 3 + ["gain"] * 2 + ["pitch"] + ["pitch"]
    state = model.curriculum_state.numpy()
    assert state[WARMUP] == 1 and state[WAIT] == 0


def test_curriculum_stop_stage_and_activation_effects():
    model = tiny_model()
    features, _ = next(iter(tiny_batches()))
    # Give the decoders non-trivial output weights, as if they had learned, so that
    # switching a transformation on visibly changes the reconstructions.
    for name in ("gain", "pitch", "filters"):
        kernel = model.decoder(name).output_conv.kernel
        kernel.assign(np.random.default_rng(0).normal(0, 0.3, kernel.shape))
    curriculum = callbacks.Curriculum("supervised", learning_rate=1e-2, patience=1, warmup_steps=4,
                                      stop_stage="pitch")
    curriculum.set_model(model)
    curriculum.on_epoch_begin(0)
    assert model.active_transformations == ()
    assert model.optimizer.get_group_scale("encoder") == 0.0
    previous = model(features, return_details=True)["reconstructions"].numpy()
    epoch = 0
    for expected_stage, active in (("gain", ("gain",)), ("pitch", ("gain", "pitch"))):
        curriculum.on_epoch_end(epoch, {"loss": 1.0})
        curriculum.on_epoch_end(epoch + 1, {"loss": 1.0})
        epoch += 2
        assert curriculum.stage == expected_stage and model.active_transformations == active
        current = model(features, return_details=True)["reconstructions"].numpy()
        assert np.abs(current - previous).max() > 1e-3
        previous = current
        decoder = f"{expected_stage}_decoder"
        scales = []
        for batch in range(6):
            curriculum.on_train_batch_begin(batch)
            scales.append(model.optimizer.get_group_scale(decoder))
        assert scales[0] == pytest.approx(WARMUP_START + (1 - WARMUP_START) / 4)
        assert scales[3:] == [1.0, 1.0, 1.0]
        assert model.optimizer.get_group_scale("encoder") == 1.0
    assert model.optimizer.get_group_scale("filters_decoder") == 0.0
    curriculum.on_epoch_end(epoch, {"loss": 1.0})
    curriculum.on_epoch_end(epoch + 1, {"loss": 1.0})
    assert model.stop_training and curriculum.stage == "pitch"


@pytest.mark.slow
def test_reassignment_copies_donor_state_into_empty_prototypes():
    model = tiny_model("unsupervised", num_prototypes=4)
    enable_all(model)
    # Creates non-zero Adam moments. Validation (6 clips) runs after training (16 clips) and
    # before on_epoch_end: what reassignment reads must still be the training assignments.
    counted = []
    probe = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: counted.append(model.train_assignment_counts.result().numpy().sum()))
    reassignment = callbacks.Reassignment(seed=0)
    model.fit(tiny_batches(), validation_data=tiny_batches(6, seed=1), epochs=2, verbose=0,
              callbacks=[reassignment, probe])
    assert counted == [16, 16]
    reassignment.history.clear()
    model.train_assignment_counts.reset_state()
    model.train_assignment_counts.update_state(np.array([0] * 50 + [1] * 50 + [2] * 100))  # prototype 3 empty
    reassignment.set_model(model)
    prototypes_before = model.prototypes.numpy().copy()
    reassignment.on_epoch_end(0)
    (epoch, [(target, donor)]), = reassignment.history
    assert target == 3 and donor in (0, 1, 2)
    after = model.prototypes.numpy()
    assert 0 < np.abs(after[3] - prototypes_before[donor]).max() < 0.1
    m, v = model.optimizer.moments(model.prototypes)
    np.testing.assert_array_equal(m.numpy()[3], m.numpy()[donor])
    kernel = model.filters_decoder.output_conv.kernel.numpy()
    np.testing.assert_array_equal(kernel[..., 12:16], kernel[..., 4 * donor:4 * donor + 4])


def test_initialisation():
    rng = np.random.default_rng(0)
    clusters = np.repeat(np.eye(3) * 5.0, 10, axis=0) + rng.normal(0, 0.01, (30, 3))
    centres = initialization.kmeans_plus_plus(clusters, 3, rng)
    assert len({int(np.argmax(c)) for c in centres}) == 3  # one seed in each well-separated cluster
    labels = np.repeat(np.arange(3), 10)
    # The medoid is a real point of its class: the one with the least summed squared distance.
    medoids = initialization.class_medoids(clusters, labels, 4)
    for k in range(3):
        members = clusters[labels == k]
        costs = [np.sum((members - point) ** 2) for point in members]
        np.testing.assert_array_equal(medoids[k], members[np.argmin(costs)])
    np.testing.assert_array_equal(medoids[3], initialization.medoid(clusters))  # K > classes
    # A class absent from the sample takes its medoid from all clips.
    sample = labels != 2
    fallback = initialization.class_medoids(clusters[sample], labels[sample], 3, clusters, labels)
    np.testing.assert_array_equal(fallback[2], medoids[2])
    model = tiny_model()
    values = initialization.initialise_prototypes(model, tiny_batches(), seed=0)
    np.testing.assert_array_equal(model.prototypes.numpy(), values)
    assert np.argmax(values[2]) == 4 + 6 * 2


def test_initial_sample_is_uniform_over_a_class_sorted_split():
    """2000 of 33 x 500 clips stored class by class: every class is in the sample, about equally."""
    rng = np.random.default_rng(1)
    chosen = initialization.uniform_sample(33 * 500, 2000, rng)
    assert len(set(chosen)) == 2000
    counts = np.bincount(chosen // 500, minlength=33)
    assert counts.min() > 30 and counts.max() < 95  # expected 60.6 per class
    np.testing.assert_array_equal(initialization.uniform_sample(10, 2000, rng), np.arange(10))
    points = np.repeat(np.arange(33.0), 500)[:, None] * np.ones((1, 4))
    values = initialization.initial_prototypes(points, np.repeat(np.arange(33), 500), 33, "supervised", noise=0.0)
    np.testing.assert_array_equal(values[:, 0], np.arange(33))  # each class from its own clips


def test_spectral_blur_matrix_is_a_renormalised_gaussian():
    from amych_tf import reconstruction

    num_bins, sigma = 20, 2.5
    bins = np.arange(num_bins)
    expected = np.exp(-0.5 * ((bins[:, None] - bins[None, :]) / sigma) ** 2)
    expected /= expected.sum(0, keepdims=True)
    blur = reconstruction.spectral_blur_matrix(sigma, num_bins).numpy()
    np.testing.assert_allclose(blur, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.full(num_bins, 0.7) @ blur, 0.7, rtol=1e-6)  # a gain passes unchanged
    np.testing.assert_array_equal(reconstruction.spectral_blur_matrix(0.0, num_bins).numpy(), np.eye(num_bins))


def test_training_loss_blurs_inputs_and_prototypes_inference_does_not():
    model = tiny_model()
    enable_all(model)
    features, _ = next(iter(tiny_batches()))
    plain = model(features, training=False)["rec_errors"].numpy()
    model.spectral_blur.assign(3.0)
    np.testing.assert_array_equal(model(features, training=False)["rec_errors"], plain)
    # NumPy: with the transformations at identity (raw stage), L_rec(x, k) = mean over real
    # frames and bins of (B x - B P_k)^2.
    model.set_active_transformations(())
    blurred = model(features, training=True)["rec_errors"].numpy()
    bins = np.arange(TINY.n_mels)
    gaussian = np.exp(-0.5 * ((bins[:, None] - bins[None, :]) / 3.0) ** 2)
    gaussian /= gaussian.sum(0, keepdims=True)
    x, mask = features["log_mel"].numpy() @ gaussian, features["mask"].numpy()
    prototypes = model.prototypes.numpy() @ gaussian
    per_frame = np.mean((x[:, :, None, :] - prototypes[None, None]) ** 2, axis=-1)
    expected = (per_frame * mask[..., None]).sum(1) / mask.sum(1)[:, None]
    np.testing.assert_allclose(blurred, expected, rtol=1e-4)


def test_curriculum_anneals_the_blur_after_the_pitch_warm_up():
    model = tiny_model()
    curriculum = callbacks.Curriculum("supervised", learning_rate=1e-2, patience=1, warmup_steps=2,
                                      blur_bins=4.0, blur_anneal_steps=4)
    curriculum.set_model(model)
    curriculum.on_epoch_begin(0)
    widths, stages = [], []
    for epoch in range(12):  # one batch per epoch, a flat loss
        curriculum.on_train_batch_begin(0)
        widths.append(float(model.spectral_blur.numpy()))
        curriculum.on_epoch_end(epoch, {"loss": 1.0})
        stages.append(curriculum.stage)
    # raw: 2 epochs; gain: 1 warm-up epoch, 1 flat one; pitch: 2 warm-up, 4 annealing epochs
    # that patience does not count, then filters (the blur stays 0 from there on).
    assert stages[:10] == ["raw", "gain", "gain", "pitch"] + ["pitch"] * 5 + ["filters"]
    assert widths[:6] == [4.0] * 6  # raw, gain and the pitch warm-up
    assert widths[6:12] == pytest.approx([3.0, 2.0, 1.0, 0.0, 0.0, 0.0])


def test_checkpoint_layout_is_unchanged_by_the_fast_layers(tmp_path):
    """networks' fused batch norm and matmul spectral collapse keep Keras' layer names in
    checkpoints (Keras 3 names layers kept in lists by class), so older checkpoints load."""
    import h5py

    model = tiny_model()
    path = str(tmp_path / "w.weights.h5")
    model.save_weights(path)
    names = []
    with h5py.File(path) as f:
        f.visit(names.append)
    assert "encoder/levels/container/conv2d/vars" in names  # level 0's spectral collapse
    assert "encoder/levels/container/container/batch_normalization/vars" in names  # level 0's batch norm
    assert not any("spectral_collapse" in n or "fused_batch" in n for n in names)
