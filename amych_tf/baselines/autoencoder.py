"""Clustering baseline (section 4, Table 2): a 2-D conv autoencoder, then K-means on its bottleneck.

The network, without skip connections, on log-Mel x [B, T, F] mapped to [-1, 1] (2x - 1)
and read as an image [B, T, F, 1]:
  encoder, 4 levels: conv 5x5 (32 filters, same padding) + LeakyReLU + max-pool 2x2
                                                    -> bottleneck [B, T/16, F/16, 32]
  decoder, 4 levels: 2x upsampling + conv 5x5 (32 filters) + LeakyReLU
  conv 5x5 to 1 channel + tanh                      -> reconstruction [B, T, F] in [-1, 1]
Loss: mean squared error between reconstruction and the [-1, 1] input over the real
frames (`mask`) and all mel bins, averaged over the batch.

Clustering. K-means needs one fixed-size vector per clip and clips differ in length, so
the embedding is the bottleneck averaged over its real time steps (the mask max-pooled
by 16, as the direct classifier pools it) and flattened: D = F/16 * 32 values, which keep
the frequency layout of the feature maps. `fit_clusters` runs scikit-learn's K-means with
K = num_prototypes = the number of classes and stores the centres in the non-trainable
weight `cluster_centres` [K, D], so checkpoints saved after it hold them;
`predict_clusters` returns the nearest centre.

Padded frames are rebuilt from the real ones inside the model (`direct.tile_padding`),
so they cannot change an embedding: each bottleneck step sees 30 frames either side of
its own 16.
"""

from __future__ import annotations

from typing import Any, Mapping

import keras
import numpy as np
import tensorflow as tf

from amych_tf.baselines.direct import BaselineModel, check_divisible, pooled_mask, tile_padding
from amych_tf.model import distributed_logs, masked_mean_over_time, unpack_features
from amych_tf.spectral import FeatureConfig

# PyTorch's nn.LeakyReLU default slope (the authors work in PyTorch); Keras' default is 0.3.
LEAKY_RELU_SLOPE = 0.01
KMEANS_INITIALISATIONS = 10


def to_unit_range(log_mel: tf.Tensor) -> tf.Tensor:
    """Log-Mel, mostly in [0, 1], to the network's [-1, 1] scale: 2x - 1."""
    return 2.0 * log_mel - 1.0


def from_unit_range(values: tf.Tensor) -> tf.Tensor:
    """Inverse of `to_unit_range`: [-1, 1] back to the log-Mel scale."""
    return 0.5 * (values + 1.0)


def masked_reconstruction_error(reconstruction: tf.Tensor, target: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean squared error per example over the real frames (mask [B, T]) and the bins: [B, T, F] -> [B]."""
    return masked_mean_over_time(tf.reduce_mean(tf.square(reconstruction - target), axis=-1), mask)


def nearest_centre(embeddings: tf.Tensor, centres: tf.Tensor) -> tf.Tensor:
    """Index of the closest centre (squared Euclidean distance): [B, D], [K, D] -> int32 [B]."""
    distances = tf.reduce_sum(tf.square(embeddings[:, tf.newaxis, :] - centres[tf.newaxis, :, :]), axis=-1)
    return tf.argmin(distances, axis=-1, output_type=tf.int32)


def kmeans(embeddings, num_clusters: int, dimension: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's K-means (10 initialisations) on embeddings [N, dimension].

    Returns (centres float32 [num_clusters, dimension], each embedding's cluster int32 [N]).
    """
    from sklearn.cluster import KMeans

    embeddings = np.asarray(embeddings, np.float64)
    if embeddings.ndim != 2 or embeddings.shape[1] != dimension:
        raise ValueError(f"embeddings must be [N, {dimension}], got shape {embeddings.shape}")
    fitted = KMeans(n_clusters=num_clusters, n_init=KMEANS_INITIALISATIONS, random_state=seed).fit(embeddings)
    return fitted.cluster_centers_.astype(np.float32), fitted.labels_.astype(np.int32)


@keras.saving.register_keras_serializable(package="amych_tf")
class ConvAutoencoder(BaselineModel):
    """2-D conv autoencoder + K-means.

    call(features) -> reconstruction [B, T, F] in [-1, 1] (the network's scale);
    features: {"log_mel": [B, T, F], "mask": [B, T] (optional)} or a log-Mel tensor,
    T and F multiples of 2^n_pools (16).
    """

    mode = "unsupervised"

    def __init__(
        self,
        feature_config: FeatureConfig | Mapping[str, Any],
        num_classes: int,
        *,
        class_names: list[str] | None = None,
        n_pools: int = 4,
        filters: int = 32,
        kernel_size: int = 5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(feature_config, FeatureConfig):
            feature_config = FeatureConfig.from_dict(feature_config)
        check_divisible(feature_config.n_mels, n_pools)
        self.feature_config = feature_config
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names is not None else None
        self.n_pools = int(n_pools)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)

        def conv(name, width=self.filters, activation=None):
            return keras.layers.Conv2D(width, self.kernel_size, padding="same", activation=activation, name=name)

        self.encoder_layers = []
        for r in range(self.n_pools):
            self.encoder_layers += [
                conv(f"encoder{r}_conv"),
                keras.layers.LeakyReLU(LEAKY_RELU_SLOPE, name=f"encoder{r}_relu"),
                keras.layers.MaxPooling2D(2, name=f"encoder{r}_pool"),
            ]
        self.decoder_layers = []
        for r in reversed(range(self.n_pools)):
            self.decoder_layers += [
                keras.layers.UpSampling2D(2, name=f"decoder{r}_up"),
                conv(f"decoder{r}_conv"),
                keras.layers.LeakyReLU(LEAKY_RELU_SLOPE, name=f"decoder{r}_relu"),
            ]
        self.decoder_layers.append(conv("output", width=1, activation="tanh"))

        # K-means centres, [K, D]; zeros until fit_clusters. Created here (D follows from
        # n_mels) so that every checkpoint has the variable.
        self.cluster_centres = self.add_weight(
            name="cluster_centres", shape=(self.num_prototypes, self.embedding_size),
            initializer="zeros", trainable=False,
        )
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.rec_tracker = keras.metrics.Mean(name="rec")

    @property
    def num_prototypes(self) -> int:
        """K of K-means: the number of classes."""
        return self.num_classes

    @property
    def embedding_size(self) -> int:
        """D = F / 2^n_pools * filters."""
        return self.feature_config.n_mels // 2**self.n_pools * self.filters

    # -- the network ---------------------------------------------------------------------

    def _network_input(self, features) -> tuple[tf.Tensor, tf.Tensor]:
        """(the padding-proof input in [-1, 1], [B, T, F], mask [B, T])."""
        log_mel, mask = unpack_features(features)
        return to_unit_range(tile_padding(log_mel, mask)), mask

    def encode(self, x: tf.Tensor) -> tf.Tensor:
        """Input in [-1, 1] [B, T, F] -> bottleneck [B, T/16, F/16, filters]."""
        x = tf.expand_dims(x, -1)
        for layer in self.encoder_layers:
            x = layer(x)
        return x

    def decode(self, bottleneck: tf.Tensor) -> tf.Tensor:
        """Bottleneck [B, T/16, F/16, filters] -> reconstruction in [-1, 1] [B, T, F]."""
        x = bottleneck
        for layer in self.decoder_layers:
            x = layer(x)
        return x[..., 0]

    def call(self, inputs, training=None):
        x, _ = self._network_input(inputs)
        return self.decode(self.encode(x))

    def reconstruct(self, features) -> tf.Tensor:
        """The reconstruction on the log-Mel scale (in [0, 1]), for listening: [B, T, F]."""
        return from_unit_range(self(features, training=False))

    def embed(self, features) -> tf.Tensor:
        """Bottleneck averaged over its real time steps, flattened: features -> [B, D]."""
        x, mask = self._network_input(features)
        bottleneck = self.encode(x)
        per_frequency = masked_mean_over_time(bottleneck, pooled_mask(mask, 2**self.n_pools))  # [B, F/16, C]
        return tf.reshape(per_frequency, [-1, self.embedding_size])

    # -- clustering ----------------------------------------------------------------------

    def fit_clusters(self, embeddings, seed: int) -> np.ndarray:
        """K-means (scikit-learn, K = num_prototypes, 10 initialisations) on embeddings [N, D].

        Stores the centres in `cluster_centres` and returns each embedding's cluster, int32 [N].
        """
        centres, clusters = kmeans(embeddings, self.num_prototypes, self.embedding_size, seed)
        self.cluster_centres.assign(centres)
        return clusters

    def predict_clusters(self, features) -> tf.Tensor:
        """Nearest centre of each clip's embedding: features -> int32 [B]."""
        return nearest_centre(self.embed(features), tf.convert_to_tensor(self.cluster_centres))

    # -- training ------------------------------------------------------------------------

    def _per_example_loss(self, features):
        x, mask = self._network_input(features)
        return masked_reconstruction_error(self.decode(self.encode(x)), x, mask)

    def _update_metrics(self, per_example):
        self.loss_tracker.update_state(per_example)
        self.rec_tracker.update_state(per_example)
        return distributed_logs({"loss": self.loss_tracker.result(), "rec": self.rec_tracker.result()})

    def train_step(self, data):
        features, _ = data
        with tf.GradientTape() as tape:
            per_example = self._per_example_loss(features)
            # Divided by the *global* batch size: summing replicas' gradients gives the mean.
            loss = tf.nn.compute_average_loss(per_example)
        gradients = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        return self._update_metrics(per_example)

    def test_step(self, data):
        features, _ = data
        return self._update_metrics(self._per_example_loss(features))

    @property
    def metrics(self):
        return [self.loss_tracker, self.rec_tracker]

    def get_config(self):
        return {
            **super().get_config(),
            "feature_config": self.feature_config.to_dict(),
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "n_pools": self.n_pools,
            "filters": self.filters,
            "kernel_size": self.kernel_size,
        }
