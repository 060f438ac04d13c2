"""Reconstructing every input frame with every prototype, fast (eqs. 5-6 in training).

The model compares each input frame x[b, t] with each transformed prototype
R_k[b, t] (eq. 5): a [batch, time, K, mels] computation, 35M elements at batch
32, 256 frames, K = 33, 128 mels. Written plainly (`transforms.transform`, a
per-element gather for the pitch shift, autodiff through everything) its
forward and backward pass alone took 4.0 s per step on 2 CPU cores (XLA).
With the two changes below the whole training step, networks and optimizer
included, takes 1.75 s (benchmarks/RESULTS-train.md):

* **Pitch shift through a table of shifted prototypes.** Every prototype is
  shifted (exactly, `transforms.pitch_shift`) to `PITCH_TABLE_SIZE` ratios
  spaced evenly in log-ratio over the decoder's range [1/e, e]; the pitch
  shift by s then interpolates linearly, in log s, between the two
  neighbouring rows. Whole rows are gathered, so the backward pass scatters
  rows instead of single bins. With 129 ratios neighbouring rows differ by a
  shift of at most ~0.7 mel bin, so this interpolation in the ratio stays
  close to the exact interpolation in frequency (tests/test_reconstruction.py
  bounds the difference). Ratios outside the table's range are clipped to it:
  the decoders cannot produce them.
* **One fused error with a hand-written gradient.** Gain and the two filters
  are additive after the pitch shift (the pitch shift is an interpolation whose
  weights sum to 1, so it commutes with adding a constant gain), so
  R = shifted + g + L + H. `frame_errors` computes mean_f (x - R)^2 and, on the
  way back, recomputes the residual and reduces it against each parameter's
  derivative, without storing the filter curves.

`transforms.transform` stays the reference (and what listening uses); the
tests check this module against it.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from amych_tf import transforms

# Decoder range of the pitch ratio: s = exp(PITCH_LOG_RANGE * tanh(.)) (docs/DESIGN.md, section 2.3).
PITCH_LOG_RANGE = 1.0
PITCH_TABLE_SIZE = 129


def pitch_table_log_ratios(size: int = PITCH_TABLE_SIZE, log_range: float = PITCH_LOG_RANGE) -> np.ndarray:
    """log s of the table's rows: `size` values evenly spaced over [-log_range, log_range]."""
    return np.linspace(-log_range, log_range, size)


def pitch_table(prototypes: tf.Tensor, mel_values, size: int = PITCH_TABLE_SIZE,
                log_range: float = PITCH_LOG_RANGE) -> tf.Tensor:
    """Each prototype [K, F] shifted exactly to each of the table's ratios: [size, K, F]."""
    ratios = tf.constant(np.exp(pitch_table_log_ratios(size, log_range)), tf.float32)
    return transforms.pitch_shift(prototypes[None, :, :], ratios[:, None], mel_values)


def table_pitch_shift(table: tf.Tensor, pitch_ratio: tf.Tensor, log_range: float = PITCH_LOG_RANGE) -> tf.Tensor:
    """Prototype k shifted by pitch_ratio [..., K]: rows of `table` [J, K, F] interpolated in log s.

    Returns [..., K, F]. Ratios outside [exp(-log_range), exp(log_range)] are clipped.
    """
    size, num_prototypes, num_bins = table.shape
    position = (tf.math.log(pitch_ratio) + log_range) * ((size - 1) / (2.0 * log_range))
    position = tf.clip_by_value(position, 0.0, size - 1.0)
    lower = tf.minimum(tf.floor(position), size - 2.0)
    weight = tf.expand_dims(position - lower, -1)
    rows = tf.cast(lower, tf.int32) * num_prototypes + tf.range(num_prototypes)
    flat = tf.reshape(table, [size * num_prototypes, num_bins])
    # (1 - w) a + w b: exactly row `lower` at w = 0 (so s = 1 on a table row is exact).
    return (1.0 - weight) * tf.gather(flat, rows) + weight * tf.gather(flat, rows + num_prototypes)


def spectral_blur_matrix(sigma: tf.Tensor, num_bins: int) -> tf.Tensor:
    """[F, F] matrix B with v @ B = v smoothed over mel bins by a Gaussian of `sigma` bins.

    Columns sum to 1 (the Gaussian renormalised where it meets the spectrum's
    edges), so a constant spectrum, a gain, is left unchanged. sigma <= 1e-3
    gives the identity: exp(-0.5 / 1e-6) underflows to 0 off the diagonal.
    Used by the coarse-to-fine schedule of training (`PlayablePrototypes.spectral_blur`).
    """
    bins = tf.range(num_bins, dtype=tf.float32)
    distance = bins[:, tf.newaxis] - bins[tf.newaxis, :]
    sigma = tf.maximum(tf.cast(sigma, tf.float32), 1e-3)
    weights = tf.exp(-0.5 * tf.square(distance / sigma))
    return weights / tf.reduce_sum(weights, axis=0, keepdims=True)


def _filter_terms(num_bins, low_cutoff, high_cutoff):
    """Arguments of the smooth hinges of eqs. 3-4, each [..., K, F]."""
    u = tf.constant(np.linspace(0.0, 1.0, num_bins), tf.float32)
    z_low = -2.0 * (u - 0.5 + tf.expand_dims(low_cutoff, -1))
    z_high = 2.0 * (u - 0.5 + tf.expand_dims(high_cutoff, -1))
    return z_low, z_high


def frame_errors(x, shifted, gain, low_slope, low_cutoff, high_slope, high_cutoff):
    """Eq. 6 before the mean over time: mean_f (x - R)^2 with R = shifted + g + L + H.

    x [B, T, F]; shifted [B, T, K, F] (the pitch-shifted prototypes); the
    parameters [B, T, K]. Returns [B, T, K]. Gradients flow to `shifted` and
    to every parameter, not to x (the data).
    """
    num_bins = x.shape[-1]
    x = tf.expand_dims(x, -2)
    sharp = transforms.FILTER_SHARPNESS

    # x is data: closed over, so the custom gradient has no gradient to return for it.
    @tf.custom_gradient
    def errors(shifted, gain, low_slope, low_cutoff, high_slope, high_cutoff):
        def residual():
            z_low, z_high = _filter_terms(num_bins, low_cutoff, high_cutoff)
            # Written as a chain of subtractions: x - (shifted + g + L + H) made
            # XLA's CPU code 1.6x slower (measured).
            residual = (
                x - shifted - tf.expand_dims(gain, -1)
                - tf.expand_dims(low_slope, -1) * transforms.softplus_sharp(z_low)
                - tf.expand_dims(high_slope, -1) * transforms.softplus_sharp(z_high)
            )
            return residual, z_low, z_high

        def gradient(upstream):
            # Recompute rather than keep [B, T, K, F] intermediates alive.
            r, z_low, z_high = residual()
            d_reconstruction = (-2.0 / num_bins) * r * tf.expand_dims(upstream, -1)
            # d softplus_10(z) / dz = sigmoid(10 z); dz/dcutoff = -2 (low), +2 (high).
            return (
                d_reconstruction,
                tf.reduce_sum(d_reconstruction, -1),
                tf.reduce_sum(d_reconstruction * transforms.softplus_sharp(z_low), -1),
                -2.0 * tf.reduce_sum(d_reconstruction * tf.expand_dims(low_slope, -1) * tf.sigmoid(sharp * z_low), -1),
                tf.reduce_sum(d_reconstruction * transforms.softplus_sharp(z_high), -1),
                2.0 * tf.reduce_sum(d_reconstruction * tf.expand_dims(high_slope, -1) * tf.sigmoid(sharp * z_high), -1),
            )

        return tf.reduce_mean(tf.square(residual()[0]), axis=-1), gradient

    return errors(shifted, gain, low_slope, low_cutoff, high_slope, high_cutoff)


def reconstructions(shifted, gain, low_slope, low_cutoff, high_slope, high_cutoff) -> tf.Tensor:
    """R = shifted + g + L + H, [B, T, K, F]: what `frame_errors` compares x with."""
    z_low, z_high = _filter_terms(shifted.shape[-1], low_cutoff, high_cutoff)
    return (
        shifted
        + tf.expand_dims(gain, -1)
        + tf.expand_dims(low_slope, -1) * transforms.softplus_sharp(z_low)
        + tf.expand_dims(high_slope, -1) * transforms.softplus_sharp(z_high)
    )
