"""Direct classification (section 4, Table 3): a temporal CNN trained with cross-entropy.

The network, on log-Mel x [B, T, F] read as an image [B, T, F, 1]:
  for each of 4 levels (widths 8, 16, 32, 64):
    conv 3x3 (same padding) + ReLU + BN
    conv 2x2 stride 2 + ReLU + BN                   -> [B, T/2^(r+1), F/2^(r+1), width]
  max over time of the real windows                 -> [B, F/16, 64]
  flatten, dense 128 + ReLU + BN, dense 64 + ReLU + BN, dense to the classes (logits).

Padding. Evaluation clips are tile-padded to the batch's length (`amych_tf.data.tile_pad`)
and `mask` [B, T] marks the real frames, which come first. Two things keep the padding
out of a prediction:
  * `tile_padding` rebuilds the padded frames from the real ones inside the model (frame
    t <- frame t mod n, exactly what the pipeline wrote, so it changes nothing on our
    batches). The convolutions near the end of a clip see the clip as context, as in
    PlayablePrototypes' encoder, and whatever a caller puts in the padded frames cannot
    change the output. Each output window sees 15 frames either side of its own 16, so
    only masking the max would not be enough.
  * the max over time skips every output position whose 16 input frames are all
    padding (`pooled_mask`, `masked_max_over_time`): repeats of the clip must not vote.

The helpers at the top are shared with `amych_tf.baselines.autoencoder`.
"""

from __future__ import annotations

from typing import Any, Mapping

import keras
import tensorflow as tf

from amych_tf.model import PrebuiltModel, distributed_logs, unpack_features
from amych_tf.spectral import FeatureConfig

# Stands in for the activations of padding windows in the max over time: far below any
# activation, and finite so that an (impossible in our data) all-padding clip gives no NaN.
MASKED_ACTIVATION = -1e9

# BatchNorm momentum 0.9 (running = 0.9 running + 0.1 batch), as in `amych_tf.networks`:
# PyTorch's default, which the authors' code uses. Keras' default 0.99 was measured to
# hurt short runs here: its moving statistics lag far behind a network still changing.
BATCH_NORM_MOMENTUM = 0.9


# -- pure functions shared by the baselines ----------------------------------------------


def tile_padding(log_mel: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Refill the padded frames of log_mel [B, T, F] by tiling the real ones: frame t <- t mod n.

    n = sum(mask) [B] is the number of real frames, which must come first (as in
    `amych_tf.data.tile_pad`, on whose output this is the identity). Branch-free.
    """
    num_frames = tf.maximum(tf.cast(tf.round(tf.reduce_sum(mask, axis=1)), tf.int32), 1)
    frames = tf.range(tf.shape(log_mel)[1], dtype=tf.int32)
    return tf.gather(log_mel, frames[tf.newaxis, :] % num_frames[:, tf.newaxis], batch_dims=1)


def pooled_mask(mask: tf.Tensor, factor: int) -> tf.Tensor:
    """Mask [B, T] -> [B, T / factor]: 1 where any of the `factor` frames is real (max-pooling)."""
    windows = tf.reshape(mask, [tf.shape(mask)[0], -1, factor])
    return tf.reduce_max(windows, axis=-1)


def masked_max_over_time(values: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Max over axis 1 of values [B, T', ...] among positions where mask [B, T'] is 1 -> [B, ...]."""
    mask = tf.reshape(mask, tf.concat([tf.shape(mask), tf.ones([tf.rank(values) - 2], tf.int32)], 0))
    return tf.reduce_max(tf.where(mask > 0, values, tf.cast(MASKED_ACTIVATION, values.dtype)), axis=1)


class BaselineModel(PrebuiltModel):
    """What the direct classifier and the autoencoder share: Adam, building with a dummy batch."""

    # Every baseline pools time by 2^n_pools: T (and F) must be multiples of it.
    n_pools: int

    @staticmethod
    def default_optimizer(learning_rate: float) -> keras.optimizers.Optimizer:
        """Adam, as the paper's baselines use."""
        return keras.optimizers.Adam(learning_rate)

    def build_for_frames(self, num_frames: int | None = None) -> None:
        """Create all weights by running one dummy batch of `num_frames` (default 2^n_pools)."""
        num_frames = num_frames or 2**self.n_pools
        self({"log_mel": tf.zeros([1, num_frames, self.feature_config.n_mels])}, training=False)


def batch_norm(name: str, offset: float = 0.0) -> keras.layers.BatchNormalization:
    """Batch norm as every baseline uses it; `offset`: the initial shift beta (Keras: 0)."""
    # Synchronised across replicas: under tf.distribute, the statistics of the global batch.
    return keras.layers.BatchNormalization(synchronized=True, momentum=BATCH_NORM_MOMENTUM, name=name,
                                           beta_initializer=keras.initializers.Constant(offset))


def check_divisible(num_mels: int, n_pools: int) -> None:
    if num_mels % 2**n_pools:
        raise ValueError(f"n_mels ({num_mels}) must be a multiple of 2^{n_pools} = {2 ** n_pools}")


# -- the model ---------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="amych_tf")
class DirectClassifier(BaselineModel):
    """Temporal CNN classifier. call(features) -> logits [B, num_classes].

    features: {"log_mel": [B, T, F], "mask": [B, T] (optional)} or a log-Mel tensor,
    T a multiple of 2^len(widths) (16), F too.
    """

    registry_name = "direct"
    mode = "supervised"

    def __init__(
        self,
        feature_config: FeatureConfig | Mapping[str, Any],
        num_classes: int,
        *,
        class_names: list[str] | None = None,
        widths=(8, 16, 32, 64),
        dense_widths=(128, 64),
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(feature_config, FeatureConfig):
            feature_config = FeatureConfig.from_dict(feature_config)
        self.feature_config = feature_config
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names is not None else None
        self.widths = tuple(int(w) for w in widths)
        self.dense_widths = tuple(int(w) for w in dense_widths)
        self.n_pools = len(self.widths)
        check_divisible(feature_config.n_mels, self.n_pools)

        self.levels = []
        for r, width in enumerate(self.widths):
            self.levels.append([
                keras.layers.Conv2D(width, 3, padding="same", activation="relu", name=f"level{r}_conv"),
                batch_norm(name=f"level{r}_bn"),
                keras.layers.Conv2D(width, 2, strides=2, activation="relu", name=f"level{r}_down"),
                batch_norm(name=f"level{r}_down_bn"),
            ])
        self.head = []
        for i, width in enumerate(self.dense_widths):
            self.head += [
                keras.layers.Dense(width, activation="relu", name=f"dense{i}"),
                batch_norm(name=f"dense{i}_bn"),
            ]
        self.classifier = keras.layers.Dense(self.num_classes, name="logits")

        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.Mean(name="accuracy")

    @property
    def num_prototypes(self) -> int:
        """Values predict_classes takes: the classes."""
        return self.num_classes

    def call(self, inputs, training=None):
        log_mel, mask = unpack_features(inputs)
        x = tf.expand_dims(tile_padding(log_mel, mask), -1)  # [B, T, F, 1]
        for level in self.levels:
            for layer in level:
                x = layer(x, training=training)
        # [B, T/16, F/16, C] -> [B, F/16, C] -> [B, F/16 * C]
        x = masked_max_over_time(x, pooled_mask(mask, 2**self.n_pools))
        x = tf.reshape(x, [-1, (self.feature_config.n_mels // 2**self.n_pools) * self.widths[-1]])
        for layer in self.head:
            x = layer(x, training=training)
        return self.classifier(x)

    def predict_classes(self, features) -> tf.Tensor:
        """argmax of the logits in inference mode: features -> int32 [B]."""
        return tf.argmax(self(features, training=False), axis=-1, output_type=tf.int32)

    # -- training ------------------------------------------------------------------------

    def _step(self, data, training):
        features, labels = data
        labels = tf.cast(labels, tf.int32)
        logits = self(features, training=training)
        per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        return logits, labels, per_example

    def _update_metrics(self, logits, labels, per_example):
        hits = tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels), tf.float32)
        self.loss_tracker.update_state(per_example)
        self.accuracy_tracker.update_state(hits)
        return distributed_logs({"loss": self.loss_tracker.result(), "accuracy": self.accuracy_tracker.result()})

    def train_step(self, data):
        with tf.GradientTape() as tape:
            logits, labels, per_example = self._step(data, training=True)
            # Divided by the *global* batch size: summing replicas' gradients gives the mean.
            loss = tf.nn.compute_average_loss(per_example)
        gradients = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        return self._update_metrics(logits, labels, per_example)

    def test_step(self, data):
        return self._update_metrics(*self._step(data, training=False))

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker]

    def get_config(self):
        return {
            **super().get_config(),
            "feature_config": self.feature_config.to_dict(),
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "widths": list(self.widths),
            "dense_widths": list(self.dense_widths),
        }
