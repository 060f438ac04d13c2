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

    def call(self, log_mel, training=None):
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

    def call(self, bottleneck, skips, training=None):
        x = bottleneck
        for level, skip in zip(self.levels, reversed(skips)):
            x = _apply(level["conv"], x, training)
            x = _apply(level["up"], x, training)
            x = tf.concat([x, skip], axis=-1)
        x = self.output_conv(_apply(self.head, x, training))
        frames = tf.shape(x)[1]
        return tf.reshape(x, [-1, frames, self.num_prototypes, self.num_params])

    def get_config(self):
        return {
            **super().get_config(),
            "num_prototypes": self.num_prototypes,
            "num_params": self.num_params,
            "n_pools": self.n_pools,
            "width": self.width,
            "collapse_channels": self.collapse_channels,
        }
