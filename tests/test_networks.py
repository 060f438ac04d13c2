"""The networks' inference path (batch norms folded into the next convolution) against the layers' own."""

import numpy as np
import pytest
import tensorflow as tf

from amych_tf import networks
from amych_tf.model import PlayablePrototypes
from amych_tf.spectral import FeatureConfig


@pytest.fixture(scope="module")
def model():
    """A built model whose batch norms hold statistics and affine weights far from the identity."""
    tf.keras.utils.set_random_seed(1)
    model = PlayablePrototypes(FeatureConfig.preset("sol"), 5)
    model.build_for_frames()
    rng = np.random.default_rng(0)
    for variable in model.weights:
        path = variable.path
        if path.endswith(("moving_mean", "/beta", "/bias")):
            variable.assign(rng.normal(0.0, 0.3, variable.shape).astype(np.float32))
        elif path.endswith(("moving_variance", "/gamma")):
            variable.assign(rng.uniform(0.3, 2.0, variable.shape).astype(np.float32))
        elif "output" in path and path.endswith("kernel"):
            variable.assign(rng.normal(0.0, 0.3, variable.shape).astype(np.float32))
    return model


def _unfolded(monkeypatch, function):
    """`function()` with the inference path through the layers themselves (nothing folded)."""
    with monkeypatch.context() as patch:
        patch.setattr(networks, "_all_built", lambda layers: False)
        return function()


@pytest.mark.parametrize("frames", [16, 48, 112])
def test_folded_inference_equals_the_layers(model, monkeypatch, frames):
    x = tf.constant(np.random.default_rng(frames).uniform(0.0, 1.0, (3, frames, 128)), tf.float32)
    folded = model.transformation_parameters(x, training=False)
    reference = _unfolded(monkeypatch, lambda: model.transformation_parameters(x, training=False))
    for name, value in reference.items():
        np.testing.assert_allclose(folded[name].numpy(), value.numpy(), rtol=1e-5, atol=1e-5, err_msg=name)
    bottleneck, skips = model.encoder(x, training=False)
    reference_bottleneck, reference_skips = _unfolded(monkeypatch, lambda: model.encoder(x, training=False))
    np.testing.assert_allclose(bottleneck.numpy(), reference_bottleneck.numpy(), rtol=1e-5, atol=1e-5)
    for skip, reference_skip in zip(skips, reference_skips):
        np.testing.assert_allclose(skip.numpy(), reference_skip.numpy(), rtol=1e-5, atol=1e-5)


def test_training_calls_the_layers(model, monkeypatch):
    """training=True never folds: batch statistics, and the moving statistics updated."""
    calls = []
    monkeypatch.setattr(networks.Encoder, "_folded_call", lambda *args: calls.append(args))
    monkeypatch.setattr(networks.TransformationDecoder, "_folded_call", lambda *args: calls.append(args))
    saved = [variable.numpy() for variable in model.weights]
    moving_mean = model.encoder.levels[0]["conv"][2].moving_mean
    before = moving_mean.numpy().copy()
    model.transformation_parameters(tf.random.uniform([2, 32, 128]), training=True)
    assert not calls
    assert not np.array_equal(moving_mean.numpy(), before)
    for variable, value in zip(model.weights, saved):
        variable.assign(value)


@pytest.mark.parametrize("stages", [("gain", "pitch", "low", "high"), ("gain", "low"), ()])
def test_gated_parameters_in_the_log_equal_the_pow(model, stages):
    """The model's pitch gate applied as exp(g log s): bit for bit s ** g at g = 0 and 1, gradients too."""
    x = tf.constant(np.random.default_rng(7).uniform(0.0, 1.0, (2, 32, 128)), tf.float32)
    saved = model.transform_gates.numpy()
    model.set_active_transformations(stages)
    try:
        variables = model.pitch_decoder.trainable_variables
        with tf.GradientTape(persistent=True) as tape:
            fast = model.gated_transformation_parameters(x, training=False)
            plain = model.gated_parameters(model.transformation_parameters(x, training=False))
        for name in plain:
            np.testing.assert_array_equal(fast[name].numpy(), plain[name].numpy(), err_msg=name)
        for a, b in zip(tape.gradient(fast["pitch_ratio"], variables), tape.gradient(plain["pitch_ratio"], variables)):
            if b is None:
                assert a is None or not np.any(a.numpy())
            else:
                np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-9)
    finally:
        model.transform_gates.assign(saved)


def test_rec_errors_from_a_precomputed_table_equal_the_call(model):
    x = {"log_mel": tf.constant(np.random.default_rng(3).uniform(0.0, 1.0, (2, 48, 128)), tf.float32),
         "mask": tf.constant(np.r_[np.ones(40), np.zeros(8)][None].repeat(2, 0), tf.float32)}
    np.testing.assert_array_equal(model.rec_errors_from_table(x, model.pitch_table()).numpy(),
                                  model(x, training=False)["rec_errors"].numpy())
    with pytest.raises(ValueError, match="inference"):
        model._rec_errors_and_parameters(x, True, model.pitch_table())
