"""Transformation networks (section 3.4): a shared 2-D encoder and 1-D U-Net decoders.

Sizes follow the authors' implementation (docs/DESIGN.md, section 2.3), which gives 545k
parameters at K = 128 and about 497k at K = 33 with 128 mel bins:

Encoder, on the input mapped to [-1, 1] (2x - 1), as an image [T, F, 1]:
  for r in 0..n_pools-1 (widths 8, 16, 32, 64):
    conv 3x3 (reflect padding) + ReLU + BN
    spectral collapse: conv over the whole remaining frequency axis
      (kernel 1 x F/2^r) to `collapse_channels` (2)  -> skip r, [T/2^r, 2]
    conv 2x2 stride 2 + ReLU + BN                     -> [T/2^(r+1), F/2^(r+1)]
  conv 3x3 to `bottleneck_width` (128) + ReLU + BN, collapse to
  `decoder_width` (64) channels                       -> bottleneck [T/2^R, 64]

Decoder (one per transformation), a 1-D U-Net of width 64:
  for r in R-1..0:
    conv1d k=3 + ReLU + BN
    transposed conv1d k=2 s=2 to 64 - 2 channels + ReLU + BN
    concatenate skip r                                -> [T/2^r, 64]
  conv1d k=3 + ReLU + BN, then a 1x1 conv to K * n_params, whose weights start
  at N(0, 1e-5) so a newly activated transformation starts (almost exactly) as
  the identity.

T must be a multiple of 2^n_pools (evaluation pads to one).
"""

from __future__ import annotations

import keras
import tensorflow as tf

ENCODER_WIDTHS_START = 8
OUTPUT_INIT_STDDEV = 1e-5


def _conv_block_2d(filters, kernel_size, strides, name):
    return [
        keras.layers.Conv2D(filters, kernel_size, strides=strides, padding="valid", name=f"{name}_conv"),
        keras.layers.ReLU(name=f"{name}_relu"),
        batch_norm(name=f"{name}_bn"),
    ]


# PyTorch's BatchNorm default (running = 0.9 running + 0.1 batch), which the
# authors' code uses. Keras' default 0.99 lags far behind a network that is
# still changing: on the demo data after 20 epochs, validation accuracy was
# 21% with the moving statistics and 90% with batch statistics.
BATCH_NORM_MOMENTUM = 0.9


@keras.saving.register_keras_serializable(package="amych_tf")
class BatchNormalization(keras.layers.BatchNormalization):
    """keras.layers.BatchNormalization through TensorFlow's fused kernel when it can.

    Named like Keras' layer on purpose: Keras 3 checkpoints name layers kept in
    lists by their class, so checkpoints written before this class load unchanged.

    Keras 3 composes batch norm of a dozen element-wise ops and reductions,
    forward and backward: ~0.2 s of CPU time per training step at the paper's
    shapes. With one replica (the statistics are this batch's) and no mask,
    this computes the same thing with FusedBatchNormV3 (oneDNN's kernel) and
    updates the moving statistics as Keras does (moving = momentum * moving +
    (1 - momentum) * batch, the batch variance without Bessel's correction).
    Otherwise (several replicas, whose statistics a synchronised layer
    all-reduces; a mask; renorm) it is Keras' own layer. Same weights either way.
    """

    def _fusable(self, inputs, mask) -> bool:
        return (mask is None and not self.renorm and self.axis in (-1, inputs.shape.rank - 1)
                and inputs.shape.rank in (3, 4) and inputs.dtype == tf.float32 and self.scale and self.center
                and tf.distribute.get_strategy().num_replicas_in_sync == 1)

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        shape = tf.shape(inputs)
        images = inputs if inputs.shape.rank == 4 else tf.expand_dims(inputs, 2)  # [B, T, C] -> [B, T, 1, C]
        update = bool(training) and self.trainable
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            images, tf.convert_to_tensor(self.gamma), tf.convert_to_tensor(self.beta),
            mean=None if update else tf.convert_to_tensor(self.moving_mean),
            variance=None if update else tf.convert_to_tensor(self.moving_variance),
            epsilon=self.epsilon, is_training=update)
        if update:
            # The kernel returns the variance with Bessel's correction; Keras keeps the biased one.
            count = tf.cast(tf.reduce_prod(tf.shape(images)[:-1]), tf.float32)
            variance = variance * (count - 1.0) / tf.maximum(count, 1.0)
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return tf.reshape(outputs, shape)


def batch_norm(name):
    # Synchronised across replicas: with tf.distribute, the statistics of the
    # global batch, so N replicas compute the same update as one device.
    return BatchNormalization(synchronized=True, momentum=BATCH_NORM_MOMENTUM, name=name)


def _apply(layers, x, training):
    for layer in layers:
        x = layer(x, training=training) if isinstance(layer, keras.layers.BatchNormalization) else layer(x)
    return x


@keras.saving.register_keras_serializable(package="amych_tf")
class Conv2D(keras.layers.Conv2D):
    """The spectral collapse: a Conv2D whose kernel spans the whole frequency axis, as one matrix product.

    Named like Keras' layer on purpose: Keras 3 checkpoints name layers kept in
    lists by their class, so checkpoints written before this class load unchanged.

    [B, T, F, C] -> [B, T, 1, filters] with kernel (1, F): the same weights and
    result as the convolution, but oneDNN's convolution kernels took ~0.3 s of
    CPU time per training step on this shape (mostly their backward passes), a
    [B T, F C] x [F C, filters] product a few milliseconds.
    """

    def call(self, inputs):
        shape = tf.shape(inputs)
        rows = tf.reshape(inputs, [-1, inputs.shape[2] * inputs.shape[3]])
        outputs = tf.matmul(rows, tf.reshape(self.kernel, [-1, self.filters])) + self.bias
        return tf.reshape(outputs, [shape[0], shape[1], 1, self.filters])


def mirror_pad_2d(x: tf.Tensor, mode: str = "REFLECT") -> tf.Tensor:
    """Pad time and frequency of [B, T, F, C] by one on each side, mirrored."""
    return tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], mode=mode)


# ---------------------------------------------------------------------------
# Inference (training=False) with every batch norm that feeds a convolution folded into it.
#
# In inference a batch norm is a per-channel affine map, x -> x * scale + shift, and every
# one here follows a ReLU, so it cannot join the convolution before it, but it can join
# the one after it when nothing pads its output with zeros: kernel * scale along the input
# channels, bias + the kernel's sum against shift. The encoder's convolutions pad by mirroring
# (which commutes with a per-channel map) or not at all, so all of its batch norms fold
# (and so does its 2x - 1); in the decoders, the batch norm before each transposed
# convolution and the one before the output layer fold, the one after each transposed
# convolution (whose output a zero-padded convolution reads) stays. The same values up to
# float32 round-off (tests/test_networks.py); weights, checkpoints and training are
# untouched: the folded kernels are computed from the variables at each call.


def _affine(bn):
    """(scale, shift) [C]: bn(x, training=False) = x * scale + shift."""
    scale = tf.convert_to_tensor(bn.gamma) * tf.math.rsqrt(tf.convert_to_tensor(bn.moving_variance) + bn.epsilon)
    return scale, tf.convert_to_tensor(bn.beta) - tf.convert_to_tensor(bn.moving_mean) * scale


def _folded(kernel, bias, affine, input_axis, output_axis=-1):
    """A kernel and bias that apply a convolution to x * scale + shift when given x.

    `input_axis` and `output_axis`: the kernel's axes of input and output channels;
    the bias gains the kernel summed over every axis but the output one, against the shift.
    """
    kernel, bias = tf.convert_to_tensor(kernel), tf.convert_to_tensor(bias)
    if affine is None:
        return kernel, bias
    scale, shift = affine
    rank = kernel.shape.rank
    input_axis, output_axis = input_axis % rank, output_axis % rank
    broadcast = [-1 if axis == input_axis else 1 for axis in range(rank)]
    summed = [axis for axis in range(rank) if axis != output_axis]
    return kernel * tf.reshape(scale, broadcast), bias + tf.reduce_sum(kernel * tf.reshape(shift, broadcast), summed)


def _mirror_pad_by_slices(x, mode="REFLECT"):
    """`mirror_pad_2d` by concatenating slices, the same values: TensorFlow's MirrorPad took
    1.6x the CPU time (measured, benchmarks/RESULTS-eval.md, session 11)."""
    first, last = (1, -2) if mode == "REFLECT" else (0, -1)
    x = tf.concat([x[:, first:first + 1], x, x[:, last:last + 1 or None]], axis=1)
    return tf.concat([x[:, :, first:first + 1], x, x[:, :, last:last + 1 or None]], axis=2)


def _conv2d_block(layers, x, affine):
    """conv (valid) + ReLU of a `_conv_block_2d` on x * scale + shift; returns the output and its batch norm."""
    conv, _, bn = layers
    kernel, bias = _folded(conv.kernel, conv.bias, affine, input_axis=2)
    y = tf.nn.conv2d(x, kernel, strides=conv.strides, padding="VALID")
    return tf.nn.relu(tf.nn.bias_add(y, bias)), _affine(bn)


def _collapse(conv, x, affine):
    """A spectral collapse (`Conv2D`) of x * scale + shift: [B, T, F, C] -> [B, T, filters]."""
    kernel, bias = _folded(conv.kernel, conv.bias, affine, input_axis=2)
    shape = tf.shape(x)
    rows = tf.reshape(x, [-1, x.shape[2] * x.shape[3]])
    columns = tf.reshape(kernel, [-1, conv.filters])
    if conv.filters <= 4:
        # A matrix-vector product per output channel: oneDNN's product by a [F C, 2] matrix took
        # twice the CPU time (measured, benchmarks/RESULTS-eval.md, session 11).
        outputs = tf.stack([tf.linalg.matvec(rows, columns[:, i]) for i in range(conv.filters)], axis=-1)
    else:
        outputs = tf.matmul(rows, columns)
    return tf.reshape(outputs + bias, [shape[0], shape[1], conv.filters])


def _transposed_pairs(tconv, x, affine):
    """A Conv1DTranspose of kernel 2, stride 2 (valid) on x * scale + shift, as one matrix product.

    Output frame 2t + j is tap j of the kernel [2, filters, C] applied to input frame t, so
    with the batch norm folded each tap has its own bias; [B, T, C] -> [B, 2T, filters].
    (oneDNN's transposed convolution took ~8% of the networks' inference time, measured.)
    """
    kernel, bias = tf.convert_to_tensor(tconv.kernel), tf.convert_to_tensor(tconv.bias)
    scale, shift = affine
    taps, filters, channels = kernel.shape
    pair_bias = bias + tf.einsum("joi,i->jo", kernel, shift)  # [2, filters]
    # Rows j * filters + o of the kernel [2 filters, C], multiplied transposed (a transpose op took
    # ~0.3 ms per call, measured): output column j * filters + o is tap j, channel o.
    taps_rows = tf.reshape(kernel * scale, [taps * filters, channels])
    shape = tf.shape(x)
    outputs = tf.matmul(tf.reshape(x, [-1, channels]), taps_rows, transpose_b=True) + tf.reshape(pair_bias, [-1])
    return tf.reshape(outputs, [shape[0], shape[1] * taps, filters])


def _all_built(layers) -> bool:
    return all(layer.built for layer in layers)


@keras.saving.register_keras_serializable(package="amych_tf")
class Encoder(keras.layers.Layer):
    """Shared 2-D encoder with learned spectral collapse.

    call(log_mel [B, T, F]) -> (bottleneck [B, T/2^R, decoder_width],
                                skips: list of [B, T/2^r, collapse_channels], r = 0..R-1)
    """

    def __init__(
        self,
        num_mels: int,
        n_pools: int = 4,
        start_width: int = ENCODER_WIDTHS_START,
        collapse_channels: int = 2,
        bottleneck_width: int = 128,
        decoder_width: int = 64,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if num_mels % (2**n_pools):
            raise ValueError(f"num_mels ({num_mels}) must be a multiple of 2^n_pools = {2 ** n_pools}")
        self.num_mels = num_mels
        self.n_pools = n_pools
        self.start_width = start_width
        self.collapse_channels = collapse_channels
        self.bottleneck_width = bottleneck_width
        self.decoder_width = decoder_width
        self.levels = []
        for r in range(n_pools):
            width = start_width * 2**r
            self.levels.append(
                {
                    "conv": _conv_block_2d(width, 3, 1, f"level{r}"),
                    "collapse": Conv2D(
                        collapse_channels, (1, num_mels // 2**r), padding="valid", name=f"level{r}_collapse"
                    ),
                    "down": _conv_block_2d(width, 2, 2, f"level{r}_down"),
                }
            )
        self.bottleneck = _conv_block_2d(bottleneck_width, 3, 1, "bottleneck")
        self.bottleneck_collapse = Conv2D(
            decoder_width, (1, num_mels // 2**n_pools), padding="valid", name="bottleneck_collapse"
        )

    def _call_layers(self):
        for level in self.levels:
            yield from level["conv"] + [level["collapse"]] + level["down"]
        yield from self.bottleneck + [self.bottleneck_collapse]

    def call(self, log_mel, training=None):
        if not training and _all_built(self._call_layers()):
            return self._folded_call(log_mel)
        x = tf.expand_dims(2.0 * log_mel - 1.0, -1)
        skips = []
        for level in self.levels:
            x = _apply(level["conv"], mirror_pad_2d(x), training)
            skips.append(tf.squeeze(level["collapse"](x), axis=2))
            x = _apply(level["down"], x, training)
        # SYMMETRIC (edge repeated) rather than REFLECT here: the shortest clips
        # (16 frames) reach the bottleneck with a single frame, which REFLECT
        # cannot pad.
        x = _apply(self.bottleneck, mirror_pad_2d(x, "SYMMETRIC"), training)
        return tf.squeeze(self.bottleneck_collapse(x), axis=2), skips

    def _folded_call(self, log_mel):
        """`call` in inference, each batch norm (and the input's 2x - 1) folded into the next convolution."""
        x = tf.expand_dims(log_mel, -1)
        affine = (tf.constant([2.0]), tf.constant([-1.0]))  # 2x - 1
        skips = []
        for level in self.levels:
            x, affine = _conv2d_block(level["conv"], _mirror_pad_by_slices(x), affine)
            skips.append(_collapse(level["collapse"], x, affine))
            x, affine = _conv2d_block(level["down"], x, affine)
        x, affine = _conv2d_block(self.bottleneck, _mirror_pad_by_slices(x, "SYMMETRIC"), affine)
        return _collapse(self.bottleneck_collapse, x, affine), skips

    def get_config(self):
        return {
            **super().get_config(),
            "num_mels": self.num_mels,
            "n_pools": self.n_pools,
            "start_width": self.start_width,
            "collapse_channels": self.collapse_channels,
            "bottleneck_width": self.bottleneck_width,
            "decoder_width": self.decoder_width,
        }


@keras.saving.register_keras_serializable(package="amych_tf")
class TransformationDecoder(keras.layers.Layer):
    """1-D U-Net predicting `num_params` raw values per prototype and frame.

    call(bottleneck, skips) -> [B, T, num_prototypes, num_params] (before the
    tanh bounding, which the model applies per transformation).
    """

    def __init__(self, num_prototypes: int, num_params: int, n_pools: int = 4, width: int = 64,
                 collapse_channels: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.num_prototypes = num_prototypes
        self.num_params = num_params
        self.n_pools = n_pools
        self.width = width
        self.collapse_channels = collapse_channels
        self.levels = []
        for r in reversed(range(n_pools)):
            self.levels.append(
                {
                    "conv": [
                        keras.layers.Conv1D(width, 3, padding="same", name=f"up{r}_conv"),
                        keras.layers.ReLU(name=f"up{r}_relu"),
                        batch_norm(name=f"up{r}_bn"),
                    ],
                    "up": [
                        keras.layers.Conv1DTranspose(width - collapse_channels, 2, strides=2, name=f"up{r}_tconv"),
                        keras.layers.ReLU(name=f"up{r}_tconv_relu"),
                        batch_norm(name=f"up{r}_tconv_bn"),
                    ],
                }
            )
        self.head = [
            keras.layers.Conv1D(width, 3, padding="same", name="head_conv"),
            keras.layers.ReLU(name="head_relu"),
            batch_norm(name="head_bn"),
        ]
        self.output_conv = keras.layers.Conv1D(
            num_prototypes * num_params,
            1,
            kernel_initializer=keras.initializers.RandomNormal(stddev=OUTPUT_INIT_STDDEV),
            bias_initializer="zeros",
            name="output",
        )

    def _call_layers(self):
        for level in self.levels:
            yield from level["conv"] + level["up"]
        yield from self.head + [self.output_conv]

    def call(self, bottleneck, skips, training=None):
        if not training and _all_built(self._call_layers()):
            return self._folded_call(bottleneck, skips)
        x = bottleneck
        for level, skip in zip(self.levels, reversed(skips)):
            x = _apply(level["conv"], x, training)
            x = _apply(level["up"], x, training)
            x = tf.concat([x, skip], axis=-1)
        x = self.output_conv(_apply(self.head, x, training))
        frames = tf.shape(x)[1]
        return tf.reshape(x, [-1, frames, self.num_prototypes, self.num_params])

    def _folded_call(self, bottleneck, skips):
        """`call` in inference, the batch norms before the transposed convolutions and the output folded."""
        x = bottleneck
        for level, skip in zip(self.levels, reversed(skips)):
            conv, relu, bn = level["conv"]
            tconv, _, tconv_bn = level["up"]
            x = _transposed_pairs(tconv, relu(conv(x)), _affine(bn))
            x = tf.concat([tconv_bn(tf.nn.relu(x), training=False), skip], axis=-1)
        conv, relu, bn = self.head
        kernel, bias = _folded(self.output_conv.kernel, self.output_conv.bias, _affine(bn), input_axis=1)
        x = relu(conv(x))
        shape = tf.shape(x)
        x = tf.matmul(tf.reshape(x, [-1, x.shape[-1]]), kernel[0]) + bias
        return tf.reshape(x, [shape[0], shape[1], self.num_prototypes, self.num_params])

    def get_config(self):
        return {
            **super().get_config(),
            "num_prototypes": self.num_prototypes,
            "num_params": self.num_params,
            "n_pools": self.n_pools,
            "width": self.width,
            "collapse_channels": self.collapse_channels,
        }
