"""Reconstructing every input frame with every prototype, fast (eqs. 5-6 in training).

The model compares each input frame x[b, t] with each transformed prototype
R_k[b, t] (eq. 5): a [batch, time, K, mels] computation, 35M elements at batch
32, 256 frames, K = 33, 128 mels. Written plainly (`transforms.transform`, a
per-element gather for the pitch shift, autodiff through everything) its
forward and backward pass alone took 4.0 s per step on 2 CPU cores (XLA).
Two changes make it cheap:

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
* **One fused, compiled error with a hand-written gradient**
  (`table_frame_errors`). Gain and the two filters are additive after the
  pitch shift (the pitch shift is an interpolation whose weights sum to 1, so
  it commutes with adding a constant gain), so R = shifted + g + L + H. XLA
  kernels work on chunks of `FRAMES_PER_CHUNK` frames: one computes
  mean_f (x - R)^2 with the table lookup, both filters and the square fused
  in one pass; on the way back, one recomputes the residual and the next
  reduces it against each parameter's derivative and scatters it into the
  table's rows. No [B, T, K, F] tensor is ever whole. Chunks run in parallel
  (XLA:CPU runs each kernel on one thread), and inference compiles one shape
  whatever the batch and clip lengths.

Where the time went, and what each change bought, is in benchmarks/RESULTS-train.md
(on the earlier machine of that file, one training step went from 1.75 s on 2 cores to 0.70 CPU-s). `frame_errors` is
the same error written plainly (autodiff), and `transforms.transform` the
reference of the whole composition (and what listening uses); the tests check
this module against both.
"""

from __future__ import annotations

import contextlib
import os

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
    """Each prototype [K, F] shifted exactly to each of the table's ratios: [size, K, F].

    `transforms.pitch_shift` of every prototype by every ratio, with the same
    interpolation (`transforms.interpolate_bins`' positions, border and formula),
    so the same values; but the read positions [size, F] depend on the ratio
    alone, so the prototypes' bins are gathered whole: rows of the transposed
    prototypes [F, K], K values at a time. (Broadcasting the prototypes to
    [size, K, F] and gathering per element took ~60 ms of a 32-clip evaluation
    batch; a gather along the prototypes' last axis 10 CPU-ms, 22 with its
    gradient; rows 2 and 11, the same values bit for bit. Measured on the AVX2
    machine of benchmarks/RESULTS-train.md.)
    """
    ratios = tf.constant(np.exp(pitch_table_log_ratios(size, log_range)), tf.float32)
    num_bins = prototypes.shape[-1]
    lower, fraction = transforms.border_positions(
        *transforms.pitch_source_position(ratios, mel_values), num_bins)  # [size, F]
    columns = tf.transpose(prototypes)  # [F, K]
    below, above = tf.gather(columns, lower), tf.gather(columns, lower + 1)  # [size, F, K]
    fraction = tf.expand_dims(fraction, -1)
    return tf.transpose((1.0 - fraction) * below + fraction * above, [0, 2, 1])


def table_rows(pitch_ratio: tf.Tensor, size: int, num_prototypes: int, log_range: float = PITCH_LOG_RANGE):
    """Where a pitch ratio [..., K] reads a flattened table [size * K, F]: (row int32 [..., K], weight [..., K]).

    The shift of prototype k by s is (1 - weight) * table[row] + weight * table[row + K]
    (rows `lower * K + k` and `(lower + 1) * K + k` of the table's reshape to [size * K, F]).
    Ratios outside [exp(-log_range), exp(log_range)] are clipped. `weight` carries the
    gradient with respect to the ratio; `row` has none.
    """
    position = (tf.math.log(pitch_ratio) + log_range) * ((size - 1) / (2.0 * log_range))
    position = tf.clip_by_value(position, 0.0, size - 1.0)
    lower = tf.minimum(tf.floor(position), size - 2.0)
    return tf.cast(lower, tf.int32) * num_prototypes + tf.range(num_prototypes), position - lower


def table_pitch_shift(table: tf.Tensor, pitch_ratio: tf.Tensor, log_range: float = PITCH_LOG_RANGE) -> tf.Tensor:
    """Prototype k shifted by pitch_ratio [..., K]: rows of `table` [J, K, F] interpolated in log s.

    Returns [..., K, F]. Ratios outside [exp(-log_range), exp(log_range)] are clipped.
    """
    size, num_prototypes, num_bins = table.shape
    rows, weight = table_rows(pitch_ratio, size, num_prototypes, log_range)
    weight = tf.expand_dims(weight, -1)
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
    """Eq. 6 before the mean over time: mean_f (x - R)^2 with R = shifted + g + L + H, plainly.

    x [B, T, F]; shifted [B, T, K, F] (the pitch-shifted prototypes); the
    parameters [B, T, K]. Returns [B, T, K]; gradients by autodiff. The
    reference of `table_frame_errors`, which the model uses (the tests compare
    the two, values and gradients).
    """
    residual = tf.expand_dims(x, -2) - reconstructions(shifted, gain, low_slope, low_cutoff, high_slope, high_cutoff)
    return tf.reduce_mean(tf.square(residual), axis=-1)


def reconstructions(shifted, gain, low_slope, low_cutoff, high_slope, high_cutoff) -> tf.Tensor:
    """R = shifted + g + L + H, [B, T, K, F]: what `frame_errors` compares x with."""
    z_low, z_high = _filter_terms(shifted.shape[-1], low_cutoff, high_cutoff)
    return (
        shifted
        + tf.expand_dims(gain, -1)
        + tf.expand_dims(low_slope, -1) * transforms.softplus_sharp(z_low)
        + tf.expand_dims(high_slope, -1) * transforms.softplus_sharp(z_high)
    )


# ---------------------------------------------------------------------------
# The fused, compiled error of training and inference.

# Frames per call of the compiled kernels. Inputs are cut into chunks of this many
# frames (the last one padded), so XLA compiles one shape whatever the batch and clip
# lengths, the chunks' [frames, K, F] temporaries stay small (4.3 MB each at K = 33,
# F = 128; peak memory was the same at 128 frames and 20 MB higher at 512), and
# independent chunks run on every core at once (XLA:CPU runs each kernel on one thread).
FRAMES_PER_CHUNK = 256

# Whether `table_frame_errors` uses its XLA kernels; read when a function is traced.
_compiled_kernels = True


@contextlib.contextmanager
def portable_kernels():
    """Trace `table_frame_errors` as plain TensorFlow ops (no XLA) inside this block.

    For graphs that leave the process: a SavedModel whose functions must be
    compiled with XLA runs in TF Serving only behind its experimental XLA flag,
    so `amych_tf.export` traces its signatures in this block. Same values (the
    tests compare); only functions traced inside the block are affected.
    """
    global _compiled_kernels
    previous, _compiled_kernels = _compiled_kernels, False
    try:
        yield
    finally:
        _compiled_kernels = previous


def _parallel_chunks() -> int:
    """How many chunks run at once: the cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _sum_over_bins(values):
    """Sum over the last axis as a product with a vector of ones: [..., F] -> [...].

    XLA:CPU reduces a product of tensors over a short last axis several times
    slower than it runs the product into a matrix-vector product (measured: 68 ms
    against 17 ms for [8192, 33, 128]).
    """
    num_bins = values.shape[-1]
    sums = tf.matmul(tf.reshape(values, [-1, num_bins]), tf.ones([num_bins, 1], values.dtype))
    return tf.reshape(sums, tf.shape(values)[:-1])


# log(1 + d) / d on [0, 1]: a polynomial of degree 8 (Chebyshev fit in float64 at 400
# nodes, coefficients rounded to float32, lowest degree first). Its largest relative error
# against float64, as a float32 Horner evaluation of d * P(d) over d in [exp(-30), 1], is 1.6e-7.
_LOG1P_COEFFICIENTS = (1.0, -0.49999502301216125, 0.33319270610809326, -0.24844369292259216,
                       0.19111430644989014, -0.13674770295619965, 0.07836166769266129, -0.02958850748836994,
                       0.005253457929939032)


def _log1p_unit(d):
    """log(1 + d) for d in [0, 1], as accurately as tf.math.log1p in float32, for XLA:CPU to vectorise.

    d * P(d), P a polynomial of degree 8 (`_LOG1P_COEFFICIENTS`): no division. Against
    float64 over d in [exp(-30), 1] the largest relative error is 1.6e-7 (tf.math.log1p:
    2.4e-7). XLA:CPU's log1p was two thirds of the forward kernel's time: 8.1 -> 5.3
    CPU-ms per chunk of 256 frames (K = 33, 128 bins) with an atanh series (one division,
    then eight terms), 5.8 -> 4.7 with this polynomial (benchmarks/RESULTS-eval.md, session 11).
    """
    series = _LOG1P_COEFFICIENTS[-1]
    for coefficient in _LOG1P_COEFFICIENTS[-2::-1]:
        series = series * d + coefficient
    return d * series


def _hinge(alpha, beta):
    """softplus(s) and sigmoid(s) at s = alpha [F] + beta [..., 1], with one exp per (frame, prototype).

    exp(-|s|) is exp(-+alpha) exp(-+beta): the [F] and the [..., 1] factors are
    computed once each instead of an exp per element, which leaves one log1p per
    element (`_log1p_unit`). Where a factor overflows its branch is not the one selected.
    """
    s = alpha + beta
    above = s > 0.0
    decay = tf.where(above, tf.exp(-alpha) * tf.exp(-beta), tf.exp(alpha) * tf.exp(beta))  # exp(-|s|)
    return tf.maximum(s, 0.0) + _log1p_unit(decay), tf.where(above, 1.0, decay) / (1.0 + decay)


def _chunk_terms(flat_table, rows, low_cutoff, high_cutoff):
    """What R is made of for a chunk, each [n, K, F]: the table rows it interpolates, each filter's hinge and slope.

    Returns below, above, low, low_sigmoid, high, high_sigmoid: L = slope_l low with
    low = softplus(10 z_l) / 10, z_l = -2 (u - 0.5 + c_l), and H likewise with
    z_h = 2 (u - 0.5 + c_h) (eqs. 1-4, `transforms`); the sigmoids are d softplus_10(z) / dz.
    """
    num_prototypes, num_bins = rows.shape[-1], flat_table.shape[-1]
    sharp = transforms.FILTER_SHARPNESS
    # 10 z_l = alpha - 20 c_l and 10 z_h = -alpha + 20 c_h, alpha = 20 (0.5 - u).
    alpha = tf.constant(2.0 * sharp * (0.5 - np.linspace(0.0, 1.0, num_bins)), tf.float32)
    below, above = tf.gather(flat_table, rows), tf.gather(flat_table, rows + num_prototypes)
    low, low_sigmoid = _hinge(alpha, -2.0 * sharp * tf.expand_dims(low_cutoff, -1))
    high, high_sigmoid = _hinge(-alpha, 2.0 * sharp * tf.expand_dims(high_cutoff, -1))
    return below, above, low / sharp, low_sigmoid, high / sharp, high_sigmoid


def _chunk_residual(x, flat_table, rows, weight, gain, low_slope, low_cutoff, high_slope, high_cutoff):
    """x - R for a chunk of frames: x [n, F], the rest [n, K] -> [n, K, F], R = shifted + g + L + H."""
    below, above, low, _, high, _ = _chunk_terms(flat_table, rows, low_cutoff, high_cutoff)
    w = tf.expand_dims(weight, -1)
    # A chain of subtractions: x - (shifted + g + L + H) made XLA's CPU code 1.6x slower (measured).
    return (
        tf.expand_dims(x, -2) - ((1.0 - w) * below + w * above) - tf.expand_dims(gain, -1)
        - tf.expand_dims(low_slope, -1) * low - tf.expand_dims(high_slope, -1) * high
    )


@tf.function(jit_compile=True, autograph=False)
def _chunk_errors(x, flat_table, rows, weight, gain, low_slope, low_cutoff, high_slope, high_cutoff):
    """mean_f (x - R)^2 of a chunk: [n, K]."""
    residual = _chunk_residual(x, flat_table, rows, weight, gain, low_slope, low_cutoff, high_slope, high_cutoff)
    return _sum_over_bins(tf.square(residual)) / x.shape[-1]


# The gradient takes two kernels. The first recomputes the residual (rather than keeping
# it from the forward pass: one [n, K, F] tensor instead of [B, T, K, F] ones alive between
# the passes) and returns d/dR; the second reads d/dR for the table's scatter and the six
# sums. In one kernel XLA:CPU computed the residual again inside every fusion that read
# it: both scatters' updates and each of the six products of the sums, 8 evaluations per
# element (XLA:CPU drops an optimization barrier). Passing d/dR from one kernel to the
# next keeps it once, a 4.3 MB tensor: 30-31 -> 13-15 CPU-ms per chunk of 256 frames
# (K = 33, 128 bins, one thread; benchmarks/RESULTS-train.md, session 12).

@tf.function(jit_compile=True, autograph=False)
def _chunk_error_gradient(x, flat_table, rows, weight, gain, low_slope, low_cutoff, high_slope, high_cutoff, upstream):
    """d sum(upstream * errors) / dR of a chunk = -(2 / F) upstream (x - R): [n, K, F]."""
    residual = _chunk_residual(x, flat_table, rows, weight, gain, low_slope, low_cutoff, high_slope, high_cutoff)
    return (-2.0 / x.shape[-1]) * tf.expand_dims(upstream, -1) * residual


@tf.function(jit_compile=True, autograph=False)
def _chunk_gradients(d_reconstruction, flat_table, rows, weight, low_slope, low_cutoff, high_slope, high_cutoff):
    """Gradients of a chunk from d/dR [n, K, F]: table [J K, F], then weight and each parameter [n, K]."""
    below, above, low, low_sigmoid, high, high_sigmoid = _chunk_terms(flat_table, rows, low_cutoff, high_cutoff)
    num_prototypes = rows.shape[-1]
    w = tf.expand_dims(weight, -1)
    indices = tf.expand_dims(rows, -1)
    d_table = tf.tensor_scatter_nd_add(tf.zeros_like(flat_table), indices, (1.0 - w) * d_reconstruction)
    d_table = tf.tensor_scatter_nd_add(d_table, indices + num_prototypes, w * d_reconstruction)
    # One product with a vector of ones reduces all six, the products fused into it (six
    # such products measured the same; six tf.reduce_sum made the two kernels 18.1 CPU-ms
    # per chunk instead of 13.4).
    sums = _sum_over_bins(tf.stack([
        d_reconstruction * (above - below), d_reconstruction, d_reconstruction * low,
        d_reconstruction * low_sigmoid, d_reconstruction * high, d_reconstruction * high_sigmoid], axis=-2))
    # d softplus_10(z) / dz = sigmoid(10 z); dz/dcutoff = -2 (low), +2 (high).
    return (d_table, sums[..., 0], sums[..., 1], sums[..., 2], -2.0 * low_slope * sums[..., 3], sums[..., 4],
            2.0 * high_slope * sums[..., 5])


def _to_chunks(values, frames_per_chunk):
    """[N, ...] -> [C, frames_per_chunk, ...], zero-padded at the end."""
    num_frames = tf.shape(values)[0]
    padding = -num_frames % frames_per_chunk
    values = tf.pad(values, [[0, padding]] + [[0, 0]] * (values.shape.rank - 1))
    return tf.reshape(values, tf.concat([[-1, frames_per_chunk], tf.shape(values)[1:]], 0))


def table_frame_errors(x, table, pitch_ratio, gain, low_slope, low_cutoff, high_slope, high_cutoff,
                       frames_per_chunk: int | None = None) -> tf.Tensor:
    """Eq. 6 before the mean over time, R_k built from the pitch table: [B, T, K].

    x [B, T, F]; table [J, K, F] (`pitch_table`); the parameters [B, T, K].
    Equals `frame_errors(x, table_pitch_shift(table, pitch_ratio), ...)` (the
    tests compare values and gradients) without its [B, T, K, F] tensors:
    compiled kernels (XLA) compute the error, and on the way back recompute
    the residual and reduce it against each parameter's derivative, chunk by
    chunk of frames. Gradients flow to the table, the pitch ratio and every
    parameter, not to x (the data).
    """
    if not _compiled_kernels:
        return frame_errors(x, table_pitch_shift(table, pitch_ratio), gain, low_slope, low_cutoff, high_slope,
                            high_cutoff)
    size, num_prototypes, num_bins = table.shape
    frames_per_chunk = frames_per_chunk or FRAMES_PER_CHUNK
    rows, weight = table_rows(pitch_ratio, size, num_prototypes)
    shape = tf.shape(gain)

    def frames(values):  # [B, T, ...] -> chunks of frames [C, n, ...]
        return _to_chunks(tf.reshape(values, tf.concat([[-1], tf.shape(values)[2:]], 0)), frames_per_chunk)

    def unchunk(values):  # [C, n, K] -> [B, T, K], the padding dropped
        return tf.reshape(tf.reshape(values, [-1, num_prototypes])[: shape[0] * shape[1]], shape)

    per_frame = [frames(v) for v in (rows, weight, gain, low_slope, low_cutoff, high_slope, high_cutoff)]
    x_chunks = frames(x)
    chunk_spec = tf.TensorSpec([frames_per_chunk, num_prototypes], tf.float32)

    # x and the rows are data and indices: closed over, so there is no gradient to return for them.
    @tf.custom_gradient
    def errors(flat_table, weight, gain, low_slope, low_cutoff, high_slope, high_cutoff):
        del weight, gain, low_slope, low_cutoff, high_slope, high_cutoff  # read chunked, from per_frame

        def forward(chunk):
            return _chunk_errors(chunk[0], flat_table, *chunk[1:])

        values = unchunk(tf.map_fn(forward, (x_chunks, *per_frame), fn_output_signature=chunk_spec,
                                   parallel_iterations=_parallel_chunks()))

        def gradient(upstream):
            chunked = (x_chunks, *per_frame, frames(upstream))
            num_chunks = tf.shape(x_chunks)[0]

            # A loop that adds up the table's gradient as it goes (in chunk order, so
            # deterministically) rather than stacking one [J K, F] per chunk; the
            # kernels of different chunks still run in parallel.
            def backward(i, d_table, d_per_frame):
                # This chunk's frames; filters = low_slope, low_cutoff, high_slope, high_cutoff.
                x, rows, weight, gain, *filters, d_errors = [values[i] for values in chunked]
                d_reconstruction = _chunk_error_gradient(x, flat_table, rows, weight, gain, *filters, d_errors)
                d_chunk, *d_values = _chunk_gradients(d_reconstruction, flat_table, rows, weight, *filters)
                return i + 1, d_table + d_chunk, [array.write(i, d) for array, d in zip(d_per_frame, d_values)]

            arrays = [tf.TensorArray(tf.float32, size=num_chunks, element_shape=chunk_spec.shape) for _ in range(6)]
            _, d_table, arrays = tf.while_loop(
                lambda i, *_: i < num_chunks, backward, (tf.constant(0), tf.zeros_like(flat_table), arrays),
                parallel_iterations=_parallel_chunks())
            return (d_table, *[unchunk(array.stack()) for array in arrays])

        return values, gradient

    flat = tf.reshape(table, [size * num_prototypes, num_bins])
    return errors(flat, weight, gain, low_slope, low_cutoff, high_slope, high_cutoff)
