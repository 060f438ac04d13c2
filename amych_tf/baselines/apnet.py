"""APNet (Zinemanas et al., Electronics 2021), as its paper and its authors' Keras code build it.

An autoencoder whose latent space holds M learned prototypes; the classifier
only sees how similar the input is to each prototype:

    x' = 2 ((x - lo) / (hi - lo) - 0.5)            min-max scaling to [-1, 1]; lo, hi = min, max of the train split
    z, (mask1, mask2) = encoder(x')                 z [T/4, F/4, C]
    x~ = decoder(z, mask1, mask2)                   [T, F], tanh
    d_ij[f] = sum_{t,c} (z_i[t,f,c] - p_j[t,f,c])^2                     (eq. 6's exponent)
    S_ij[f] = exp(-d_ij[f]),   s_ij = sum_f H[j, f] S_ij[f]             (eqs. 6-7)
    y~_i = softmax(s_i W)                           W [M, classes], no bias     (eq. 8)
    D_ij = mean_f d_ij[f]
    loss = alpha CE + beta (mean_i min_j D_ij + mean_j min_i D_ij) + gamma mean_i mean_{t,f} (x'_i - x~_i)^2
                                                                         (eqs. 3, 5, 9, 10)

What follows the authors' code (github:pzinemanas/APNet, apnet/model.py `APNet.build`,
`create_encoder`, `create_decoder`, `train`; apnet/layers.py `PrototypeLayer`,
`WeightedSum`; apnet/losses.py `prototype_loss`; the training loop and scaler of
their dcase_models library, `KerasModelContainer.train` and `Scaler('minmax')`):

* Encoder: three 5x5 "same" convolutions of C = 32 filters with LeakyReLU (Keras'
  slope 0.3), a 2x2 max-pool after the first two whose masks (1 where the window's
  maximum was, all of them on ties: `greater_equal`) are kept. Decoder: 5x5
  transposed convolutions; after each of the first two, 2x nearest upsampling
  multiplied by the matching mask (mask2 first), then LeakyReLU; the last gives 1
  channel and tanh.
* Prototypes start as Keras' 'uniform' initialiser, U(-0.05, 0.05)
  (`PrototypeLayer.build`). (The ISMIR authors' copy drew them from U[0, 1]: the
  initial distances were then 10^2-10^3, exp(-d) = 0 and the classifier got no
  gradient; benchmarks/RESULTS.md measured it at chance.)
* The weighted sum (`WeightedSum`): a free kernel H [M, F'] that starts at 1/F'
  and carries Keras' UnitNorm(axis=0) constraint: after every update, each latent
  frequency's column over the M prototypes is rescaled to unit L2 norm. No softmax.
* Losses (`APNet.train`): 'categorical_crossentropy', Keras' 'mean_squared_error'
  (the mean over frames and bins, not a sum) and `prototype_loss`, with the loss
  weights (alpha, beta, gamma) = (10, 5, 5) of `train`'s default and the
  Medley-solos-DB config (the instrument task); the ISMIR authors' (2, 1, 1) has
  the same ratios.
* Input: the authors scale their log-Mels with `Scaler('minmax')`: the global
  minimum and maximum of the training set mapped to -1 and 1 (`input_min`,
  `input_max`, set by `APNet.prepare_construction` from the train split).
* Optimisation: plain Adam (`KerasModelContainer.train`: `Adam(lr=...)`, no
  gradient clipping; the 0.5 norm clipping was the ISMIR authors' addition),
  learning rate 1e-3, model selection on validation accuracy (their
  `AccuracyCallback` keeps the best weights and stops after `early_stopping`
  epochs without improvement): `amych_tf.training` does the same for every baseline.
* Prototype classes (`Prototypes.__init__` in apnet/prototypes.py): each
  prototype's latent goes through the classifier (its similarities to all
  prototypes, the weighted sum, the dense layer); the arg-max is its class.
* Decoding a prototype (the same function) uses the pooling masks of the training
  window with the largest weighted similarity s_ij to it.
* Prototype refinement (`APNet.refine_prototypes`, the paper's section 5.2.1):
  `refined_copy` removes redundant prototypes and rescales the dense weights;
  `python -m amych_tf.train --refine_epochs=N` then trains N more epochs.
  The channel refinement (section 5.2.2) is not implemented.

Windows. APNet sees exactly `num_frames` frames (the training crop length).
A clip of n real frames (evaluation clips come tile-padded, `mask` marking the
real frames, which are a prefix) is covered by ceil(n / num_frames) windows of
its real frames tiled along time: window k holds frames (k num_frames + t) mod
n, t < num_frames, the same tiling as the data pipeline's (training crops of
short clips, evaluation padding). Every window goes through the network; the
clip's similarity vector s (its embedding) is the mean over its windows, and
its logits are s W (averaging logits would give the same: W is linear). (The
authors' evaluation averages the softmax outputs of a file's windows; with
several windows per clip the two can differ.) A training crop of exactly
num_frames frames is one window, so training and evaluation share one path. To
stay XLA-friendly (no branch on values), a batch of padded length T is cut into
ceil(T / num_frames) windows per clip; windows past a clip's own
ceil(n / num_frames) are computed and then weighted 0.

Evaluation losses (test_step) follow the same windows: CE on the clip logits,
reconstruction and min_j D_ij averaged over the clip's windows, and the batch
term mean_j min_i D_ij taken over the batch's valid windows. For a batch of
training crops these are exactly the training loss.
"""

from __future__ import annotations

from typing import Any, Mapping

import keras
import numpy as np
import tensorflow as tf

from amych_tf.model import AverageAccuracy, PrebuiltModel, distributed_logs, unpack_features
from amych_tf.spectral import FeatureConfig

POOL = 2  # 2x2 max-pooling, twice: the latent grid is [T/4, F/4]
NUM_POOLS = 2
# Keras' LeakyReLU default, which the APNet authors' Keras code uses (docs/DESIGN.md, section 4).
LEAKY_RELU_SLOPE = 0.3
# Keras' 'uniform' initialiser, which the authors' PrototypeLayer uses.
PROTOTYPE_INIT_RANGE = 0.05
# Loss weights (alpha, beta, gamma) of the authors' APNet.train default and Medley-solos-DB config.
LOSS_WEIGHTS = (10.0, 5.0, 5.0)


# -- the maths, as pure functions ---------------------------------------------------------


def to_signed(log_mel: tf.Tensor, low: float = 0.0, high: float = 1.0) -> tf.Tensor:
    """Min-max scaling: [low, high] (the train split's range) -> APNet's input scale [-1, 1].

    As dcase_models' Scaler('minmax'): 2 ((x - low) / (high - low) - 0.5).
    """
    return 2.0 * ((log_mel - low) / (high - low) - 0.5)


def from_signed(values: tf.Tensor, low: float = 0.0, high: float = 1.0) -> tf.Tensor:
    """Inverse of `to_signed`: [-1, 1] -> the log-Mel scale [low, high]."""
    return (high - low) * (0.5 * values + 0.5) + low


def upsample(x: tf.Tensor) -> tf.Tensor:
    """Nearest-neighbour 2x upsampling of the two spatial axes: [B, H, W, C] -> [B, 2H, 2W, C]."""
    shape = tf.shape(x)
    repeated = tf.broadcast_to(x[:, :, tf.newaxis, :, tf.newaxis, :],
                               [shape[0], shape[1], POOL, shape[2], POOL, shape[3]])
    return tf.reshape(repeated, [shape[0], shape[1] * POOL, shape[2] * POOL, shape[3]])


def max_pool_with_mask(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """2x2 max-pooling and its mask: [B, H, W, C] (H, W even) -> (pooled [B, H/2, W/2, C], mask [B, H, W, C]).

    mask is 1 at every position holding the maximum of its 2x2 window (all of
    them on ties, as the authors' `greater_equal`), 0 elsewhere; it carries no
    gradient.
    """
    pooled = tf.nn.max_pool2d(x, ksize=POOL, strides=POOL, padding="VALID")
    mask = tf.cast(tf.greater_equal(x, upsample(pooled)), x.dtype)
    return pooled, tf.stop_gradient(mask)


def masked_upsample(x: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Unpooling: x [B, H, W, C] upsampled 2x and kept only where mask [B, 2H, 2W, C] is 1."""
    return upsample(x) * mask


def prototype_distances(z: tf.Tensor, prototypes: tf.Tensor) -> tf.Tensor:
    """d[i, j, f] = sum_{t,c} (z[i,t,f,c] - p[j,t,f,c])^2: z [B, T', F', C], prototypes [M, T', F', C] -> [B, M, F'].

    Expanded as |z|^2 + |p|^2 - 2 z.p (one matmul per latent frequency), which
    never holds the [B, M, T', F', C] difference (3.4 GB at SOL, batch 128);
    clipped at 0 against rounding.
    """
    latent_frequencies = z.shape[2]
    z_by_frequency = tf.reshape(tf.transpose(z, [2, 0, 1, 3]), [latent_frequencies, tf.shape(z)[0], -1])
    p_by_frequency = tf.reshape(tf.transpose(prototypes, [2, 0, 1, 3]),
                                [latent_frequencies, tf.shape(prototypes)[0], -1])
    cross = tf.matmul(z_by_frequency, p_by_frequency, transpose_b=True)  # [F', B, M]
    z_squared = tf.reduce_sum(tf.square(z), axis=[1, 3])  # [B, F']
    p_squared = tf.reduce_sum(tf.square(prototypes), axis=[1, 3])  # [M, F']
    distances = z_squared[:, tf.newaxis, :] + p_squared[tf.newaxis, :, :] - 2.0 * tf.transpose(cross, [1, 2, 0])
    return tf.maximum(distances, 0.0)


def similarity(distances: tf.Tensor, frequency_weights: tf.Tensor) -> tf.Tensor:
    """s[i, j] = sum_f H[j, f] exp(-d[i, j, f]) (eqs. 6-7): d [B, M, F'], the kernel H [M, F'] -> [B, M]."""
    return tf.reduce_sum(frequency_weights[tf.newaxis] * tf.exp(-distances), axis=-1)


def mean_distances(distances: tf.Tensor) -> tf.Tensor:
    """D[i, j] = d[i, j, f] averaged over latent frequency: [B, M, F'] -> [B, M]."""
    return tf.reduce_mean(distances, axis=-1)


def prototype_loss_terms(distances: tf.Tensor, valid: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
    """The two terms of eq. 5 from d [B, M, F']: (min_j D_ij per example [B], mean_j min_i D_ij scalar).

    The second is a property of the batch, not of an example. `valid` [B]
    (0/1) leaves examples out of the min over i; a batch with no valid
    example gives 0 (an empty replica batch of a distributed evaluation).
    """
    mean_d = mean_distances(distances)
    per_example = tf.reduce_min(mean_d, axis=1)
    if valid is None:
        valid = tf.ones_like(per_example)
    nearest_example = tf.reduce_min(tf.where(valid[:, tf.newaxis] > 0, mean_d, np.inf), axis=0)  # [M]
    # With no valid example every entry is inf: replaced (not multiplied) by 0, so no NaN reaches the gradient.
    return per_example, tf.reduce_mean(tf.where(tf.reduce_any(valid > 0), nearest_example, 0.0))


def prototype_loss(distances: tf.Tensor) -> tf.Tensor:
    """Eq. 5: mean_i min_j D_ij + mean_j min_i D_ij, from d [B, M, F'] (scalar)."""
    per_example, batch_term = prototype_loss_terms(distances)
    return tf.reduce_mean(per_example) + batch_term


def reconstruction_error(target: tf.Tensor, reconstruction: tf.Tensor) -> tf.Tensor:
    """Per-example mean squared error over frames and bins (Keras' 'mean_squared_error'): [B, T, F] x2 -> [B]."""
    return tf.reduce_mean(tf.square(target - reconstruction), axis=[1, 2])


def cross_entropy(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Eq. 9 per example, -log softmax(logits)[y]: logits [B, K], int labels [B] -> [B]."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int32), logits=logits)


def total_loss(logits, labels, distances, target, reconstruction, alpha=LOSS_WEIGHTS[0], beta=LOSS_WEIGHTS[1],
               gamma=LOSS_WEIGHTS[2]) -> tf.Tensor:
    """Eq. 10 over a batch of windows: alpha mean CE + beta eq. 5 + gamma MSE (scalar)."""
    return (alpha * tf.reduce_mean(cross_entropy(logits, labels)) + beta * prototype_loss(distances)
            + gamma * tf.reduce_mean(reconstruction_error(target, reconstruction)))


def window_indices(num_real_frames: tf.Tensor, padded_length, window: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Frame indices of every window of every clip, and which windows count.

    num_real_frames int [B] (>= 1); padded_length: T of the batch (python int
    or scalar tensor). Returns indices int32 [B, W, window], W = ceil(T /
    window), indices[b, k, t] = (k window + t) mod n_b, and valid float32
    [B, W], 1 for k < ceil(n_b / window). Branch-free.
    """
    num_real_frames = tf.cast(num_real_frames, tf.int32)
    num_windows = (tf.cast(padded_length, tf.int32) + window - 1) // window
    frames = tf.range(num_windows)[:, tf.newaxis] * window + tf.range(window)[tf.newaxis, :]  # [W, window]
    indices = frames[tf.newaxis] % num_real_frames[:, tf.newaxis, tf.newaxis]
    windows_needed = (num_real_frames + window - 1) // window
    valid = tf.cast(tf.range(num_windows)[tf.newaxis, :] < windows_needed[:, tf.newaxis], tf.float32)
    return indices, valid


def masked_window_mean(values: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
    """Mean over axis 1 of values [B, W, ...] over the windows where valid [B, W] is 1."""
    weights = tf.reshape(valid, tf.concat([tf.shape(valid), tf.ones([tf.rank(values) - 2], tf.int32)], 0))
    return tf.reduce_sum(values * weights, axis=1) / tf.maximum(tf.reduce_sum(weights, axis=1), 1.0)


# -- layers -------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="amych_tf")
class APNetEncoder(keras.layers.Layer):
    """call(x [B, T, F] on the [-1, 1] scale) -> (z [B, T/4, F/4, C], (mask1 [B, T, F, C], mask2 [B, T/2, F/2, C]))."""

    def __init__(self, filters: int = 32, kernel_size: int = 5, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.convs = [keras.layers.Conv2D(filters, kernel_size, padding="same", name=f"conv{i + 1}")
                      for i in range(3)]

    def call(self, x):
        x = tf.expand_dims(x, -1)
        masks = []
        for i, conv in enumerate(self.convs):
            x = tf.nn.leaky_relu(conv(x), alpha=LEAKY_RELU_SLOPE)
            if i < NUM_POOLS:
                x, mask = max_pool_with_mask(x)
                masks.append(mask)
        return x, tuple(masks)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size}


@keras.saving.register_keras_serializable(package="amych_tf")
class APNetDecoder(keras.layers.Layer):
    """call(z [B, T/4, F/4, C], (mask1, mask2) from the encoder) -> reconstruction [B, T, F] in (-1, 1)."""

    def __init__(self, filters: int = 32, kernel_size: int = 5, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.deconvs = [keras.layers.Conv2DTranspose(filters, kernel_size, padding="same", name=f"deconv{i + 1}")
                        for i in range(NUM_POOLS)]
        self.output_deconv = keras.layers.Conv2DTranspose(1, kernel_size, padding="same", name="deconv3")

    def call(self, z, masks):
        x = z
        for deconv, mask in zip(self.deconvs, reversed(masks)):
            x = tf.nn.leaky_relu(masked_upsample(deconv(x), mask), alpha=LEAKY_RELU_SLOPE)
        return tf.tanh(self.output_deconv(x)[..., 0])

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size}


@keras.saving.register_keras_serializable(package="amych_tf")
class PrototypeSimilarity(keras.layers.Layer):
    """M latent prototypes and the weighted sum's kernel (the authors' PrototypeLayer and WeightedSum).

    call(z [B, T', F', C]) -> (d [B, M, F'], s [B, M]); `prototypes` [M, T', F', C]
    start U(-0.05, 0.05) (Keras' 'uniform'), `frequency_weights` H [M, F'] at 1/F'
    under UnitNorm(axis=0) (the module docstring).
    """

    def __init__(self, num_prototypes: int, latent_shape, **kwargs):
        super().__init__(**kwargs)
        self.num_prototypes = num_prototypes
        self.latent_shape = tuple(int(n) for n in latent_shape)

    def build(self, input_shape=None):
        self.prototypes = self.add_weight(
            name="prototypes", shape=(self.num_prototypes, *self.latent_shape),
            initializer=keras.initializers.RandomUniform(-PROTOTYPE_INIT_RANGE, PROTOTYPE_INIT_RANGE))
        latent_frequencies = self.latent_shape[1]
        self.frequency_weights = self.add_weight(
            name="frequency_weights", shape=(self.num_prototypes, latent_frequencies),
            initializer=keras.initializers.Constant(1.0 / latent_frequencies),
            constraint=keras.constraints.UnitNorm(axis=0))

    def call(self, z):
        distances = prototype_distances(z, tf.convert_to_tensor(self.prototypes))
        return distances, similarity(distances, tf.convert_to_tensor(self.frequency_weights))

    def get_config(self):
        return {**super().get_config(), "num_prototypes": self.num_prototypes, "latent_shape": list(self.latent_shape)}


# -- the model ----------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="amych_tf")
class APNet(PrebuiltModel):
    """APNet classifier; clusters on its prototype similarities (the baseline of Tables 2 and 3).

    Inputs: {"log_mel": [B, T, F], "mask": [B, T] (optional; other keys
    ignored)} or a log-Mel tensor, any T >= 1 (windowed as in the module
    docstring). `call` returns {"logits": [B, classes], "similarities": [B, M]}
    and with `return_details=True` also, per window (N = B x windows per
    clip): "window_valid" [B, W], "windows" [N, num_frames, F] (log-Mel),
    "latent" [N, T', F', C], "distances" [N, M, F'], "reconstruction"
    [N, num_frames, F] on the [-1, 1] scale.

    `num_prototypes` is the interface's count of prediction values (=
    num_classes); APNet's latent prototypes number `num_prototypes_latent`.
    """

    registry_name = "apnet"
    mode = "supervised"
    clusters = True
    decodes_prototypes = True
    refinable = True

    @classmethod
    def prepare_construction(cls, config, info) -> dict:
        """The training crop length and the train split's (min, max) log-Mel over real frames
        (the authors' min-max scaling)."""
        import numpy as np

        from amych_tf import data

        low, high = np.inf, -np.inf
        for features, _ in data.evaluation_dataset(config.data_dir, "train", batch_size=config.eval_batch_size,
                                                   info=info):
            real = features["log_mel"].numpy()[features["mask"].numpy() > 0]
            low, high = min(low, float(real.min())), max(high, float(real.max()))
        return {"num_frames": config.train_frames, "input_min": low, "input_max": high}

    def __init__(
        self,
        feature_config: FeatureConfig | Mapping[str, Any],
        num_classes: int,
        *,
        class_names: list[str] | None = None,
        num_frames: int = 256,
        num_prototypes_latent: int = 100,
        filters: int = 32,
        kernel_size: int = 5,
        alpha: float = LOSS_WEIGHTS[0],
        beta: float = LOSS_WEIGHTS[1],
        gamma: float = LOSS_WEIGHTS[2],
        input_min: float = 0.0,
        input_max: float = 1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(feature_config, FeatureConfig):
            feature_config = FeatureConfig.from_dict(feature_config)
        downsampling = POOL**NUM_POOLS
        if num_frames % downsampling or feature_config.n_mels % downsampling:
            raise ValueError(f"APNet pools twice by 2: num_frames ({num_frames}) and n_mels "
                             f"({feature_config.n_mels}) must be multiples of {downsampling}")
        self.feature_config = feature_config
        self.num_classes = int(num_classes)
        self.num_prototypes = self.num_classes
        self.class_names = list(class_names) if class_names is not None else None
        self.num_frames = int(num_frames)
        self.num_prototypes_latent = int(num_prototypes_latent)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        if not input_max > input_min:
            raise ValueError(f"input_max ({input_max}) must be larger than input_min ({input_min})")
        self.input_min, self.input_max = float(input_min), float(input_max)
        self.latent_shape = (num_frames // downsampling, feature_config.n_mels // downsampling, self.filters)

        self.encoder = APNetEncoder(filters, kernel_size, name="encoder")
        self.decoder = APNetDecoder(filters, kernel_size, name="decoder")
        self.prototype_layer = PrototypeSimilarity(num_prototypes_latent, self.latent_shape, name="prototype_layer")
        self.classifier = keras.layers.Dense(num_classes, use_bias=False, name="classifier")
        self.cluster_centres = self.add_weight(
            name="cluster_centres", shape=(self.num_classes, self.num_prototypes_latent), initializer="zeros",
            trainable=False)

        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.ce_tracker = keras.metrics.Mean(name="ce")
        self.prototype_tracker = keras.metrics.Mean(name="prototype")
        self.rec_tracker = keras.metrics.Mean(name="rec")
        self.accuracy_tracker = keras.metrics.Mean(name="accuracy")
        self.average_accuracy = AverageAccuracy(self.num_classes)

    # -- forward ------------------------------------------------------------------------

    def scale(self, log_mel: tf.Tensor) -> tf.Tensor:
        """The log-Mel on the network's [-1, 1] scale (`to_signed` with the train split's range)."""
        return to_signed(log_mel, self.input_min, self.input_max)

    def unscale(self, values: tf.Tensor) -> tf.Tensor:
        """Inverse of `scale`: the network's [-1, 1] scale back to log-Mel."""
        return from_signed(values, self.input_min, self.input_max)

    def split_windows(self, log_mel: tf.Tensor, mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Clips [B, T, F] with mask [B, T] -> (windows [B x W, num_frames, F], valid [B, W]); see the module docstring."""
        num_real_frames = tf.maximum(tf.cast(tf.round(tf.reduce_sum(mask, axis=1)), tf.int32), 1)
        indices, valid = window_indices(num_real_frames, tf.shape(log_mel)[1], self.num_frames)
        windows = tf.gather(log_mel, tf.reshape(indices, [tf.shape(indices)[0], -1]), batch_dims=1)
        return tf.reshape(windows, [-1, self.num_frames, self.feature_config.n_mels]), valid

    def call(self, inputs, training=None, return_details=False):
        log_mel, mask = unpack_features(inputs)
        windows, valid = self.split_windows(log_mel, mask)
        latent, pooling_masks = self.encoder(self.scale(windows))
        distances, window_similarities = self.prototype_layer(latent)
        batch, windows_per_clip = tf.shape(valid)[0], tf.shape(valid)[1]
        similarities = masked_window_mean(
            tf.reshape(window_similarities, [batch, windows_per_clip, self.num_prototypes_latent]), valid)
        outputs = {"logits": self.classifier(similarities), "similarities": similarities}
        if return_details:
            outputs.update(window_valid=valid, windows=windows, latent=latent, distances=distances,
                           reconstruction=self.decoder(latent, pooling_masks))
        return outputs

    @staticmethod
    def _model_inputs(features):
        # Evaluation batches may carry "path" (strings) and "num_frames": keep them out of the model call.
        if isinstance(features, Mapping):
            return {key: features[key] for key in ("log_mel", "mask") if key in features}
        return features

    def predict_classes(self, features) -> tf.Tensor:
        """The predicted class of each clip, argmax of its logits: [B] int32."""
        return tf.argmax(self(self._model_inputs(features), training=False)["logits"], axis=-1, output_type=tf.int32)

    # -- clustering ---------------------------------------------------------------------

    def embed(self, features) -> tf.Tensor:
        """Each clip's prototype similarity vector s (mean over its windows): [B, M]."""
        return self(self._model_inputs(features), training=False)["similarities"]

    def fit_clusters(self, embeddings, seed: int = 0) -> np.ndarray:
        """K-means (scikit-learn, K = num_classes, 10 initialisations) on embeddings [N, M].

        Stores the centres in `cluster_centres` and returns each embedding's cluster, int32 [N].
        """
        from sklearn.cluster import KMeans

        embeddings = np.asarray(embeddings, np.float64)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.num_prototypes_latent:
            raise ValueError(f"embeddings must be [N, {self.num_prototypes_latent}], got shape {embeddings.shape}")
        kmeans = KMeans(n_clusters=self.num_classes, n_init=10, random_state=seed).fit(embeddings)
        self.cluster_centres.assign(kmeans.cluster_centers_.astype(np.float32))
        return kmeans.labels_.astype(np.int32)

    def predict_clusters(self, features) -> tf.Tensor:
        """The nearest cluster centre (squared Euclidean) of each clip's embedding: [B] int32."""
        embeddings = self.embed(features)
        centres = tf.convert_to_tensor(self.cluster_centres)
        squared = tf.reduce_sum(tf.square(embeddings[:, tf.newaxis, :] - centres[tf.newaxis]), axis=-1)
        return tf.argmin(squared, axis=-1, output_type=tf.int32)

    # -- prototypes as spectrograms (the paper's section 5.1.2) -------------------------

    def decode_prototypes(self, examples, *, batch_size: int = 32, return_nearest: bool = False):
        """Each latent prototype decoded with the pooling masks of its most similar example window.

        examples: training examples, a log-Mel array [N, T, F] (any T; windowed
        as in evaluation), a features dict with "log_mel" and "mask", or a
        tf.data.Dataset of such batches or of (features, labels) batches (an
        evaluation split: clips of any length, read batch by batch). The window
        chosen for prototype j is the arg-max over all windows of the weighted
        similarity s_ij (the authors' `Prototypes.__init__`: `argmax` of
        `model_input_to_distances`, the weighted sum's output); the decoder then
        runs on p_j with that window's masks.

        Returns the spectrograms [M, num_frames, F] float32 on the log-Mel
        scale (the decoder's tanh output mapped back), and with
        `return_nearest` also the index [M] of the example holding each
        chosen window (in the order the examples come).
        """
        best_similarity = np.full([self.num_prototypes_latent], -np.inf)
        best_window = np.zeros([self.num_prototypes_latent, self.num_frames, self.feature_config.n_mels], np.float32)
        nearest_example = np.zeros([self.num_prototypes_latent], np.int64)
        prototypes = tf.convert_to_tensor(self.prototype_layer.prototypes)
        start = 0
        for log_mel, mask in _example_batches(examples, batch_size):
            windows, valid = self.split_windows(log_mel, mask)
            latent, _ = self.encoder(self.scale(windows))
            _, similarities = self.prototype_layer(latent)
            similarities = similarities.numpy()  # [windows, M]
            similarities[np.asarray(valid).reshape(-1) == 0] = -np.inf
            most_similar = similarities.argmax(axis=0)
            better = similarities[most_similar, np.arange(self.num_prototypes_latent)] > best_similarity
            best_similarity[better] = similarities[most_similar[better], np.flatnonzero(better)]
            best_window[better] = windows.numpy()[most_similar[better]]
            nearest_example[better] = start + most_similar[better] // int(valid.shape[1])
            start += int(log_mel.shape[0])
        if not start:
            raise ValueError("decode_prototypes needs at least one example")
        spectra = []
        for first in range(0, self.num_prototypes_latent, batch_size):
            # Chunks bound the masks' memory: mask1 alone is 4 MB per prototype at SOL.
            _, pooling_masks = self.encoder(self.scale(tf.constant(best_window[first:first + batch_size])))
            spectra.append(self.unscale(self.decoder(prototypes[first:first + batch_size], pooling_masks)).numpy())
        spectra = np.concatenate(spectra).astype(np.float32)
        return (spectra, nearest_example) if return_nearest else spectra

    def prototype_class_probabilities(self) -> np.ndarray:
        """What the classifier says of each latent prototype taken as an input: softmax probabilities [M, classes].

        The authors' `Prototypes.__init__` runs the prototypes through
        `model_embeddings_to_out` (prototype layer, weighted sum, dense layer).
        """
        prototypes = tf.convert_to_tensor(self.prototype_layer.prototypes)
        _, similarities = self.prototype_layer(prototypes)
        return tf.nn.softmax(self.classifier(similarities)).numpy()

    def prototype_classes(self) -> np.ndarray:
        """The class of each latent prototype, the arg-max of `prototype_class_probabilities`: int [M]."""
        return self.prototype_class_probabilities().argmax(axis=1)

    def refined_copy(self) -> tuple["APNet", np.ndarray]:
        """The paper's prototype refinement (section 5.2.1, eq. 12; the authors' `APNet.refine_prototypes`).

        With the distances between prototypes D_jl = mean over (t, f, c) of
        (p_j - p_l)^2 and the threshold gamma = min_{j != l} D_jl + mean(D) / 2
        (the mean over every entry, the zero diagonal included, as their code
        computes it), prototypes are visited in class order (stable); prototype
        j is removed when its nearest other prototype l is closer than gamma,
        belongs to the same class and j was not kept as some earlier
        prototype's nearest; l is then kept. The dense rows of each class's
        remaining prototypes are rescaled so that the column sums of |W| over
        that class's prototypes stay what they were (their
        `Prototypes.remove_instance`). Returns (a new APNet with the remaining
        prototypes and every other weight copied, the indices kept, sorted by
        class as the authors sort them).
        """
        prototypes = np.asarray(self.prototype_layer.prototypes, np.float64)
        classes = self.prototype_classes()
        order = np.argsort(classes, kind="stable")
        flat = prototypes.reshape(len(prototypes), -1)[order]
        sorted_classes = classes[order]
        distances = ((flat[:, None, :] - flat[None, :, :]) ** 2).mean(axis=-1)
        off_diagonal = distances + np.diag(np.full(len(flat), np.inf))
        threshold = off_diagonal.min() + distances.mean() / 2.0
        removed, kept = set(), set()
        for j in range(len(flat)):
            nearest = int(off_diagonal[j].argmin())
            if off_diagonal[j, nearest] < threshold and j not in kept and sorted_classes[nearest] == sorted_classes[j]:
                removed.add(j)
                kept.add(nearest)
        remaining = np.array([j for j in range(len(flat)) if j not in removed], np.int64)
        indices = order[remaining]

        kernel = np.asarray(self.classifier.kernel, np.float64)[order]
        new_kernel = kernel[remaining].copy()
        for label in np.unique(sorted_classes[list(removed)]) if removed else []:
            before = np.abs(kernel[sorted_classes == label]).sum(axis=0)
            rows = sorted_classes[remaining] == label
            after = np.abs(new_kernel[rows]).sum(axis=0)
            new_kernel[rows] *= np.where(after > 0, before / np.maximum(after, 1e-12), 1.0)

        config = {**self.get_config(), "num_prototypes_latent": len(indices)}
        refined = APNet.from_config(config)
        refined.build_for_frames()
        for source, target in ((self.encoder, refined.encoder), (self.decoder, refined.decoder)):
            target.set_weights(source.get_weights())
        refined.prototype_layer.prototypes.assign(prototypes[indices].astype(np.float32))
        refined.prototype_layer.frequency_weights.assign(np.asarray(self.prototype_layer.frequency_weights)[indices])
        refined.classifier.kernel.assign(new_kernel.astype(np.float32))
        return refined, indices

    # -- training -----------------------------------------------------------------------

    def compute_losses(self, outputs, labels) -> dict[str, tf.Tensor]:
        """Per-clip losses from `call(..., return_details=True)` outputs.

        Returns ce, rec (MSE on the [-1, 1] scale, mean over the clip's
        windows), prototype_per_example (min_j D_ij, mean over windows), each
        [B], and prototype_batch: mean_j min_i D_ij over the valid windows
        (scalar). The eq. 10 loss is the batch mean of
        alpha ce + beta prototype_per_example + gamma rec, plus beta prototype_batch.
        """
        valid = outputs["window_valid"]
        batch, windows_per_clip = tf.shape(valid)[0], tf.shape(valid)[1]

        def per_clip(per_window):
            return masked_window_mean(tf.reshape(per_window, [batch, windows_per_clip]), valid)

        nearest_prototype, prototype_batch = prototype_loss_terms(outputs["distances"], tf.reshape(valid, [-1]))
        return {
            "ce": cross_entropy(outputs["logits"], labels),
            "rec": per_clip(reconstruction_error(self.scale(outputs["windows"]), outputs["reconstruction"])),
            "prototype_per_example": per_clip(nearest_prototype),
            "prototype_batch": prototype_batch,
        }

    def _weighted(self, losses):
        """(per-clip part of eq. 10 [B], the batch part, scalar)."""
        per_example = (self.alpha * losses["ce"] + self.beta * losses["prototype_per_example"]
                       + self.gamma * losses["rec"])
        return per_example, self.beta * losses["prototype_batch"]

    def replica_loss(self, losses) -> tf.Tensor:
        """The scalar whose gradient train_step applies, from `compute_losses`: eq. 10 on one device.

        Per-example terms: sum over the replica / global batch size. The batch term
        (a min over this replica's examples) is divided by the number of replicas,
        so the summed gradients average it over replicas.
        """
        per_example, batch_part = self._weighted(losses)
        return tf.nn.compute_average_loss(per_example) + tf.nn.scale_regularization_loss(batch_part)

    def _update_metrics(self, losses, logits, labels):
        per_example, batch_part = self._weighted(losses)
        predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
        self.loss_tracker.update_state(per_example + batch_part)
        self.ce_tracker.update_state(losses["ce"])
        self.prototype_tracker.update_state(losses["prototype_per_example"] + losses["prototype_batch"])
        self.rec_tracker.update_state(losses["rec"])
        self.accuracy_tracker.update_state(tf.cast(tf.equal(predictions, labels), tf.float32))
        self.average_accuracy.update_state(labels, predictions)
        return distributed_logs({metric.name: metric.result() for metric in self.metrics})

    def train_step(self, data):
        features, labels = data
        labels = tf.cast(labels, tf.int32)
        with tf.GradientTape() as tape:
            outputs = self(self._model_inputs(features), training=True, return_details=True)
            losses = self.compute_losses(outputs, labels)
            loss = self.replica_loss(losses)
        gradients = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        return self._update_metrics(losses, outputs["logits"], labels)

    def test_step(self, data):
        features, labels = data
        labels = tf.cast(labels, tf.int32)
        outputs = self(self._model_inputs(features), training=False, return_details=True)
        return self._update_metrics(self.compute_losses(outputs, labels), outputs["logits"], labels)

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker, self.average_accuracy, self.ce_tracker,
                self.prototype_tracker, self.rec_tracker]

    @staticmethod
    def default_optimizer(learning_rate: float = 1e-3) -> keras.optimizers.Optimizer:
        """Keras' Adam with its defaults and no gradient clipping, learning rate 1e-3 (the APNet paper, section 4.4)."""
        return keras.optimizers.Adam(learning_rate=learning_rate)

    # -- building and serialisation -----------------------------------------------------

    def build_for_frames(self, num_frames: int | None = None) -> None:
        """Create all weights by running one dummy batch of `num_frames` (default: the window length)."""
        num_frames = num_frames or self.num_frames
        self({"log_mel": tf.zeros([1, num_frames, self.feature_config.n_mels])}, training=False,
             return_details=True)

    def get_config(self):
        return {
            **super().get_config(),
            "feature_config": self.feature_config.to_dict(),
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "num_frames": self.num_frames,
            "num_prototypes_latent": self.num_prototypes_latent,
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "alpha": self.alpha,
            "beta": self.beta,
            "gamma": self.gamma,
            "input_min": self.input_min,
            "input_max": self.input_max,
        }


def _example_batches(examples, batch_size: int):
    """(log_mel [B, T, F], mask [B, T]) batches of decode_prototypes' `examples`."""
    if isinstance(examples, tf.data.Dataset):
        for batch in examples:
            yield unpack_features(batch[0] if isinstance(batch, tuple) else batch)
        return
    log_mel, mask = unpack_features(examples)
    for start in range(0, int(log_mel.shape[0]), batch_size):
        yield log_mel[start:start + batch_size], mask[start:start + batch_size]
