"""The fast reconstruction path of training (amych_tf.reconstruction) against the reference transforms."""

import numpy as np
import tensorflow as tf

from amych_tf import reconstruction, transforms
from amych_tf.spectral import FeatureConfig

SOL = FeatureConfig.preset("sol")
B, T, K, F = 2, 3, 4, SOL.n_mels


def random_parameters(rng, shape=(B, T, K)):
    return {
        "gain": rng.uniform(-0.5, 0.5, shape),
        "low_slope": rng.uniform(-0.25, 0.25, shape),
        "low_cutoff": rng.uniform(-0.25, 0.25, shape),
        "high_slope": rng.uniform(-0.25, 0.25, shape),
        "high_cutoff": rng.uniform(-0.25, 0.25, shape),
    }


def numpy_frame_errors(x, shifted, p):
    """Eqs. 1, 3-6 in NumPy: R = shifted + g + L + H (softplus_10 hinges), mean over bins of (x - R)^2."""
    u = np.linspace(0.0, 1.0, F)

    def softplus_10(z):
        return np.logaddexp(0.0, 10.0 * z) / 10.0

    low = p["low_slope"][..., None] * softplus_10(-2.0 * (u - 0.5 + p["low_cutoff"][..., None]))
    high = p["high_slope"][..., None] * softplus_10(2.0 * (u - 0.5 + p["high_cutoff"][..., None]))
    r = shifted + p["gain"][..., None] + low + high
    return ((x[:, :, None, :] - r) ** 2).mean(-1)


def test_frame_errors_equal_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(0.5, 0.1, (B, T, F))
    shifted = rng.normal(0.5, 0.1, (B, T, K, F))
    p = random_parameters(rng)
    got = reconstruction.frame_errors(
        tf.constant(x, tf.float32), tf.constant(shifted, tf.float32),
        *[tf.constant(p[n], tf.float32) for n in ("gain", "low_slope", "low_cutoff", "high_slope", "high_cutoff")])
    np.testing.assert_allclose(got.numpy(), numpy_frame_errors(x, shifted, p), rtol=1e-5, atol=1e-7)


def test_frame_errors_gradient_equals_autodiff_of_the_transforms():
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(0.5, 0.1, (B, T, F)), tf.float32)
    shifted = tf.constant(rng.normal(0.5, 0.1, (B, T, K, F)), tf.float32)
    p = {n: tf.constant(v, tf.float32) for n, v in random_parameters(rng).items()}
    names = ("gain", "low_slope", "low_cutoff", "high_slope", "high_cutoff")
    weights = tf.constant(rng.random((B, T, K)), tf.float32)  # a non-uniform upstream gradient

    def reference(shifted, p):
        r = transforms.high_filter(
            transforms.low_filter(transforms.gain(shifted, p["gain"]), p["low_slope"], p["low_cutoff"]),
            p["high_slope"], p["high_cutoff"])
        return tf.reduce_mean(tf.square(x[:, :, None, :] - r), -1)

    with tf.GradientTape(persistent=True) as tape:
        tape.watch([shifted, *p.values()])
        plain = tf.reduce_sum(weights * reconstruction.frame_errors(x, shifted, *[p[n] for n in names]))
        slow = tf.reduce_sum(weights * reference(shifted, p))
    np.testing.assert_allclose(plain.numpy(), slow.numpy(), rtol=1e-5)
    for target in [shifted, *[p[n] for n in names]]:
        np.testing.assert_allclose(tape.gradient(plain, target).numpy(), tape.gradient(slow, target).numpy(),
                                   rtol=1e-4, atol=1e-6)


def test_fused_table_errors_and_gradients_equal_the_plain_formulation():
    """table_frame_errors (compiled kernels, hand-written gradient) against autodiff through
    frame_errors(table_pitch_shift(...)) and the NumPy errors, over several chunks of frames,
    the last one padded."""
    rng = np.random.default_rng(5)
    batch, frames = 3, 7  # 21 frames: chunks of 8 frames, the last 5 of them padding
    prototypes = tf.Variable(smooth_prototypes(rng))
    x_np = rng.normal(0.5, 0.1, (batch, frames, F))
    x = tf.constant(x_np, tf.float32)
    ratio = tf.Variable(np.exp(rng.uniform(-1.2, 1.2, (batch, frames, K))), dtype=tf.float32)  # some clipped
    p_np = random_parameters(rng, (batch, frames, K))
    p = {n: tf.Variable(v, dtype=tf.float32) for n, v in p_np.items()}
    names = ("gain", "low_slope", "low_cutoff", "high_slope", "high_cutoff")
    weights = tf.constant(rng.random((batch, frames, K)), tf.float32)
    sources = [prototypes, ratio, *[p[n] for n in names]]

    with tf.GradientTape(persistent=True) as tape:
        table = reconstruction.pitch_table(tf.convert_to_tensor(prototypes), SOL.mel_values())
        fused = reconstruction.table_frame_errors(x, table, ratio, *[p[n] for n in names], frames_per_chunk=8)
        shifted = reconstruction.table_pitch_shift(table, ratio)
        plain = reconstruction.frame_errors(x, shifted, *[p[n] for n in names])
        fused_loss, plain_loss = tf.reduce_sum(weights * fused), tf.reduce_sum(weights * plain)
    np.testing.assert_allclose(fused.numpy(), numpy_frame_errors(x_np, shifted.numpy(), p_np), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(fused.numpy(), plain.numpy(), rtol=1e-5, atol=1e-7)
    for source in sources:
        g_fused, g_plain = tape.gradient(fused_loss, source).numpy(), tape.gradient(plain_loss, source).numpy()
        assert np.all(np.isfinite(g_fused)) and np.abs(g_fused).max() > 0
        # atol: the ratio's gradient sums d * (above - below), which cancels, in another order.
        np.testing.assert_allclose(g_fused, g_plain, rtol=1e-4, atol=3e-5 * np.abs(g_plain).max())
    # Each frame's error is its own: computed alone, in another chunk position, it is the same.
    alone = reconstruction.table_frame_errors(x[1:2], table, ratio[1:2], *[p[n][1:2] for n in names],
                                              frames_per_chunk=8)
    np.testing.assert_allclose(alone.numpy(), fused.numpy()[1:2], rtol=1e-6, atol=1e-8)


def smooth_prototypes(rng, num=K):
    """Log-Mel-like spectra: a smooth envelope plus harmonic-ish peaks."""
    bins = np.arange(F)
    out = []
    for _ in range(num):
        envelope = 0.6 - 0.3 * bins / F
        peaks = sum(0.2 * np.exp(-0.5 * ((bins - c) / 1.5) ** 2) for c in rng.uniform(10, 120, 5))
        out.append(envelope + peaks)
    return tf.constant(np.array(out), tf.float32)


def test_table_pitch_shift_is_exact_on_table_ratios_and_close_between_them():
    rng = np.random.default_rng(2)
    prototypes = smooth_prototypes(rng)
    mel_values = SOL.mel_values()
    table = reconstruction.pitch_table(prototypes, mel_values)
    log_ratios = reconstruction.pitch_table_log_ratios()

    on_grid = tf.constant(np.exp(log_ratios[[0, 37, 64, 100, 128]])[:, None] * np.ones((1, K)), tf.float32)
    exact = transforms.pitch_shift(prototypes, on_grid, mel_values).numpy()
    np.testing.assert_allclose(reconstruction.table_pitch_shift(table, on_grid).numpy(), exact, atol=2e-5)

    # s = 1 is a table row: the identity is exact.
    identity = reconstruction.table_pitch_shift(table, tf.ones([3, K])).numpy()
    np.testing.assert_array_equal(identity, np.broadcast_to(prototypes.numpy(), (3, K, F)))

    # Between rows the table interpolates in log s; measured against the exact shift
    # on these peaky spectra (peak height 0.2) the error stays below 0.02.
    between = tf.constant(np.exp(rng.uniform(-1, 1, (200, K))), tf.float32)
    error = np.abs(reconstruction.table_pitch_shift(table, between).numpy()
                   - transforms.pitch_shift(prototypes, between, mel_values).numpy())
    assert error.max() < 0.02, error.max()
    assert error.mean() < 1e-3, error.mean()


def test_reconstructions_equal_the_reference_composition_on_table_ratios():
    rng = np.random.default_rng(3)
    prototypes = smooth_prototypes(rng)
    p = {n: tf.constant(v, tf.float32) for n, v in random_parameters(rng).items()}
    grid = reconstruction.pitch_table_log_ratios()
    ratio = tf.constant(np.exp(rng.choice(grid, (B, T, K))), tf.float32)
    table = reconstruction.pitch_table(prototypes, SOL.mel_values())
    fast = reconstruction.reconstructions(reconstruction.table_pitch_shift(table, ratio), p["gain"],
                                          p["low_slope"], p["low_cutoff"], p["high_slope"], p["high_cutoff"])
    reference = transforms.transform(prototypes, gain_db=p["gain"], pitch_ratio=ratio, low_slope=p["low_slope"],
                                     low_cutoff=p["low_cutoff"], high_slope=p["high_slope"],
                                     high_cutoff=p["high_cutoff"], mel_values=SOL.mel_values())
    np.testing.assert_allclose(fast.numpy(), reference.numpy(), atol=3e-5)
