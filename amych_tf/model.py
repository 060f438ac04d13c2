"""PlayablePrototypes: the paper's model (sections 3.1-3.4) as a subclassed keras.Model.

K prototypes P_k (log-Mel spectra [F]) are bent onto an input x [T, F] by
per-frame transformations predicted by the networks of `amych_tf.networks`:
    R_k(x)[t] = high o low o pitch o gain (P_k)                         (eq. 5)
    L_rec(x, k) = 1/T sum_t 1/F ||x[t] - R_k(x)[t]||^2                  (eq. 6)
Unsupervised loss: mean over the batch of min_k L_rec(x, k)             (eq. 7)
Supervised loss:   L_rec(x, y) + lambda_ce * CE(softmax(-beta L_rec), y) (eqs. 8-9)
with prototype k tied to class k and beta = softplus(beta_free).

Eq. 6 is normalised by F as well as T (the mean squared error over time and
mel bins, as the authors' code does, docs/DESIGN.md 3); the paper's formula divides
by T only. The cross-entropy's logits use the paper's scale, -beta * F * L_rec
(the squared error summed over bins): with the mean, rec errors of ~1e-3 and
beta = softplus(-4) = 0.018 give logits of ~1e-5, a CE stuck at log K whose
gradient is nil, and beta, moving ~lr per Adam step, would need 10^5 steps to
matter. Measured on the demo data: CE stayed at log 8 = 2.0794 for 16 epochs. Frames where `mask` is 0 (evaluation padding) are left out of the
mean.

Which transformations are active is read from `transform_gates` (a
non-trainable weight, saved with checkpoints), so the curriculum switches
stages without retracing the compiled step.
"""

from __future__ import annotations

from typing import Any, Mapping

import keras
import numpy as np
import tensorflow as tf

from amych_tf import reconstruction, transforms
from amych_tf.contract import MODES, ModelContract
from amych_tf.networks import Encoder, TransformationDecoder
from amych_tf.spectral import FeatureConfig

# Output scaling of the decoders (docs/DESIGN.md, section 2.3): tanh, then these factors.
GAIN_SCALE = 0.5
PITCH_SCALE = reconstruction.PITCH_LOG_RANGE  # s = exp(PITCH_SCALE * tanh(.)), in [1/e, e]
FILTER_SCALE = 0.25
DECODERS = {"gain": 1, "pitch": 1, "filters": 4}  # name -> parameters per prototype and frame
BETA_FREE_INIT = -4.0


def unpack_features(inputs) -> tuple[tf.Tensor, tf.Tensor]:
    """(log_mel float32 [B, T, F], mask float32 [B, T]) from a features dict or a log-Mel tensor.

    A missing mask means every frame is real.
    """
    if isinstance(inputs, Mapping):
        log_mel = tf.convert_to_tensor(inputs["log_mel"], tf.float32)
        mask = inputs.get("mask")
    else:
        log_mel, mask = tf.convert_to_tensor(inputs, tf.float32), None
    if mask is None:
        mask = tf.ones(tf.shape(log_mel)[:2], tf.float32)
    return log_mel, tf.cast(mask, tf.float32)


def distributed_logs(logs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Logs that Keras can reduce under MultiWorkerMirroredStrategy.

    Keras 3 reduces every log with strategy.reduce("MEAN", value, axis=0) under
    multi-worker training, which fails on scalars (tensorflow/tensorflow#72388):
    give each a leading axis of 1 there. With a single replica (one worker, one
    device) the reduce keeps that axis, and callbacks would get [1]-shaped logs,
    so scalars stay scalars then.
    """
    strategy = tf.distribute.get_strategy()
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and strategy.num_replicas_in_sync > 1:
        return {name: tf.reshape(value, [1]) for name, value in logs.items()}
    return logs


def masked_mean_over_time(values: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean over axis 1 of values [B, T, ...] counting frames where mask [B, T] is 1."""
    mask = tf.reshape(mask, tf.concat([tf.shape(mask), tf.ones([tf.rank(values) - 2], tf.int32)], 0))
    return tf.reduce_sum(values * mask, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)


def _additive(parameters: Mapping[str, tf.Tensor]) -> tuple[tf.Tensor, ...]:
    """gain, low_slope, low_cutoff, high_slope, high_cutoff: the terms added after the pitch shift."""
    return tuple(parameters[name] for name in ("gain", "low_slope", "low_cutoff", "high_slope", "high_cutoff"))


def clustering_loss(rec_errors: tf.Tensor) -> tf.Tensor:
    """Eq. 7 per example: min_k L_rec(x, k), [B, K] -> [B]."""
    return tf.reduce_min(rec_errors, axis=-1)


def cross_entropy(rec_errors: tf.Tensor, labels: tf.Tensor, beta: tf.Tensor, num_bins: int) -> tf.Tensor:
    """Eq. 8 per example: -log softmax(-beta F L_rec)[y], [B, K] -> [B] (F L_rec: the paper's eq. 6 scale)."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=-beta * num_bins * rec_errors)


def classification_loss(rec_errors, labels, beta, lambda_ce, num_bins):
    """Eq. 9 per example: L_rec(x, y) + lambda_ce * CE, and its two parts, each [B]."""
    rec = tf.gather(rec_errors, labels, batch_dims=1)
    ce = cross_entropy(rec_errors, labels, beta, num_bins)
    return rec + lambda_ce * ce, rec, ce


@keras.saving.register_keras_serializable(package="amych_tf")
class AverageAccuracy(keras.metrics.Metric):
    """Mean over classes of the per-class accuracy (the paper's AA), classes seen so far."""

    def __init__(self, num_classes: int, name="average_accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.correct = self.add_variable(shape=(num_classes,), initializer="zeros", name="correct", aggregation="sum")
        self.total = self.add_variable(shape=(num_classes,), initializer="zeros", name="total", aggregation="sum")

    def update_state(self, labels, predictions, sample_weight=None):
        labels = tf.cast(labels, tf.int32)
        hits = tf.cast(tf.equal(labels, tf.cast(predictions, tf.int32)), tf.float32)
        self.correct.assign_add(tf.math.unsorted_segment_sum(hits, labels, self.num_classes))
        self.total.assign_add(tf.math.unsorted_segment_sum(tf.ones_like(hits), labels, self.num_classes))

    def result(self):
        seen = self.total > 0
        per_class = tf.where(seen, self.correct / tf.maximum(self.total, 1.0), 0.0)
        return tf.reduce_sum(per_class) / tf.maximum(tf.reduce_sum(tf.cast(seen, tf.float32)), 1.0)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


@keras.saving.register_keras_serializable(package="amych_tf")
class AssignmentCounts(keras.metrics.Metric):
    """How many examples each prototype won (argmin L_rec) since the last reset: [K].

    Read by the reassignment callback and the TensorBoard histogram; kept out
    of the progress bar (it is a vector).
    """

    def __init__(self, num_prototypes: int, name="assignment_counts", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_prototypes = num_prototypes
        self.counts = self.add_variable(shape=(num_prototypes,), initializer="zeros", name="counts", aggregation="sum")

    def update_state(self, winners, sample_weight=None):
        ones = tf.ones_like(winners, dtype=tf.float32)
        self.counts.assign_add(tf.math.unsorted_segment_sum(ones, tf.cast(winners, tf.int32), self.num_prototypes))

    def result(self):
        return tf.identity(self.counts)

    def get_config(self):
        return {**super().get_config(), "num_prototypes": self.num_prototypes}


class PrebuiltModel(ModelContract, keras.Model):
    """A model built by running a dummy batch (`build_for_frames`), never symbolically by fit.

    Shared by PlayablePrototypes and the baselines (amych_tf.baselines), which
    thereby implement `contract.ModelContract`.
    """

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Skip Keras' symbolic build once every layer and the optimizer exist.

        Keras 3.15's TensorFlow trainer otherwise pulls a batch at the start of
        fit/evaluate under any tf.distribute strategy and all-reduces it to build
        the model symbolically; under MultiWorkerMirroredStrategy that reduce
        fails on dict inputs ("Attempt to convert a value ({'log_mel':
        PerReplica...) to a Tensor"). These models have no compiled loss or
        metrics and are built by `build_for_frames`, so there is nothing to build.
        """
        layers_built = all(layer.built for layer in self._flatten_layers())
        if layers_built and self._compile_loss is None and self._compile_metrics is None:
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)


@keras.saving.register_keras_serializable(package="amych_tf")
class PlayablePrototypes(PrebuiltModel):
    """K playable prototypes with transformation networks.

    Inputs: {"log_mel": [B, T, F], "mask": [B, T] (optional)}, or a log-Mel
    tensor; T a multiple of 2^n_pools. Outputs of `call`: {"rec_errors": [B, K]},
    plus with `return_details=True` the reconstructions [B, T, K, F] and the
    transformation parameters, each [B, T, K]: gain, pitch_ratio, low_cutoff,
    low_slope, high_cutoff, high_slope (the explanation of a prediction).
    """

    registry_name = "prototypes"
    playable = True
    exportable = True
    modes = MODES

    @classmethod
    def from_train_config(cls, config, info, **prepared):
        del prepared
        return cls(info.features, config.num_prototypes or info.num_classes, mode=config.mode,
                   num_classes=info.num_classes, class_names=info.class_names, lambda_ce=config.lambda_ce,
                   beta_init=config.beta_init)

    def training_optimizer(self, config):
        """AdamW with a learning-rate scale per parameter group, which the curriculum sets."""
        from amych_tf.optimizers import GroupedAdamW

        return GroupedAdamW(optimizer_groups(config.weight_decay), learning_rate=config.learning_rate)

    def __init__(
        self,
        feature_config: FeatureConfig | Mapping[str, Any],
        num_prototypes: int,
        *,
        mode: str = "supervised",
        num_classes: int | None = None,
        class_names: list[str] | None = None,
        lambda_ce: float = 0.01,
        beta_init: float = BETA_FREE_INIT,
        n_pools: int = 4,
        start_width: int = 8,
        collapse_channels: int = 2,
        bottleneck_width: int = 128,
        decoder_width: int = 64,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not isinstance(feature_config, FeatureConfig):
            feature_config = FeatureConfig.from_dict(feature_config)
        num_classes = num_prototypes if num_classes is None else num_classes
        if mode == "supervised" and num_prototypes < num_classes:
            raise ValueError(
                f"supervised mode ties prototype k to class k: K={num_prototypes} < {num_classes} classes"
            )
        self.feature_config = feature_config
        self.num_prototypes = num_prototypes
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else None
        self.mode = mode
        self.lambda_ce = lambda_ce
        self.beta_init = beta_init
        self.n_pools = n_pools
        self.architecture = dict(
            start_width=start_width, collapse_channels=collapse_channels,
            bottleneck_width=bottleneck_width, decoder_width=decoder_width,
        )
        num_mels = feature_config.n_mels
        self.mel_values = feature_config.mel_values()

        self.prototypes = self.add_weight(
            name="prototypes", shape=(num_prototypes, num_mels),
            initializer=keras.initializers.RandomNormal(mean=0.5, stddev=0.01),
        )
        # beta only enters the supervised loss (eq. 8).
        self.beta_free = self.add_weight(
            name="beta_free", shape=(), initializer=keras.initializers.Constant(beta_init),
            trainable=mode == "supervised",
        )
        self.transform_gates = self.add_weight(
            name="transform_gates", shape=(len(transforms.STAGES),), initializer="zeros", trainable=False
        )
        # [stage index, epochs without improvement, best loss, warm-up step] of the
        # curriculum (amych_tf.training.callbacks.Curriculum); a weight so checkpoints carry it.
        # Coarse-to-fine training: the Gaussian width (mel bins) by which training
        # blurs inputs and prototypes in the loss; the curriculum anneals it to 0.
        self.spectral_blur = self.add_weight(
            name="spectral_blur", shape=(), initializer="zeros", trainable=False)
        self.curriculum_state = self.add_weight(
            name="curriculum_state", shape=(4,), trainable=False,
            initializer=keras.initializers.Constant([0.0, 0.0, np.inf, 0.0]),
        )
        self.encoder = Encoder(
            num_mels, n_pools=n_pools, start_width=start_width, collapse_channels=collapse_channels,
            bottleneck_width=bottleneck_width, decoder_width=decoder_width, name="encoder",
        )
        self.gain_decoder = TransformationDecoder(
            num_prototypes, DECODERS["gain"], n_pools, decoder_width, collapse_channels, name="gain_decoder")
        self.pitch_decoder = TransformationDecoder(
            num_prototypes, DECODERS["pitch"], n_pools, decoder_width, collapse_channels, name="pitch_decoder")
        self.filters_decoder = TransformationDecoder(
            num_prototypes, DECODERS["filters"], n_pools, decoder_width, collapse_channels, name="filters_decoder")

        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.rec_tracker = keras.metrics.Mean(name="rec")
        self.ce_tracker = keras.metrics.Mean(name="ce")
        self.accuracy_tracker = keras.metrics.Mean(name="accuracy")
        self.average_accuracy = AverageAccuracy(num_classes)
        self.assignment_counts = AssignmentCounts(num_prototypes)
        # The epoch's *training* assignments, for the reassignment callback, which
        # resets it at each epoch's start. Not in `metrics`: Keras resets those when
        # validation starts, and validation must not overwrite what training counted.
        self.train_assignment_counts = AssignmentCounts(num_prototypes, name="train_assignment_counts")

    # -- the model -----------------------------------------------------------------------

    @property
    def beta(self) -> tf.Tensor:
        return tf.math.softplus(tf.convert_to_tensor(self.beta_free))

    def transformation_parameters(self, log_mel, training=None, pitch_gate=None) -> dict[str, tf.Tensor]:
        """Per-frame, per-prototype parameters, each [B, T, K], bounded as in docs/DESIGN.md, section 2.3.

        `pitch_gate` g: the pitch ratio as exp(g log s) (`gated_transformation_parameters`).
        """
        bottleneck, skips = self.encoder(log_mel, training=training)
        gain = GAIN_SCALE * tf.tanh(self.gain_decoder(bottleneck, skips, training=training)[..., 0])
        log_ratio = PITCH_SCALE * tf.tanh(self.pitch_decoder(bottleneck, skips, training=training)[..., 0])
        pitch = tf.exp(log_ratio if pitch_gate is None else pitch_gate * log_ratio)
        filters = FILTER_SCALE * tf.tanh(self.filters_decoder(bottleneck, skips, training=training))
        return {
            "gain": gain,
            "pitch_ratio": pitch,
            "low_cutoff": filters[..., 0],
            "low_slope": filters[..., 1],
            "high_cutoff": filters[..., 2],
            "high_slope": filters[..., 3],
        }

    def gated_parameters(self, parameters: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """The parameters with switched-off stages at their neutral values (g = 0, s = 1, slopes 0)."""
        gain, pitch_ratio, low_slope, high_slope = transforms.gate_parameters(
            self.transform_gates, gain_db=parameters["gain"], pitch_ratio=parameters["pitch_ratio"],
            low_slope=parameters["low_slope"], high_slope=parameters["high_slope"])
        return {**parameters, "gain": gain, "pitch_ratio": pitch_ratio, "low_slope": low_slope,
                "high_slope": high_slope}

    def gated_transformation_parameters(self, log_mel, training=None) -> dict[str, tf.Tensor]:
        """gated_parameters(transformation_parameters(log_mel)), the pitch gate g applied in the log.

        s ** g as exp(g log s), log s straight from the decoder: the same values bit for bit
        when g is 0 or 1 (what the gates hold), gradients included, without a pow over
        [B, T, K] (1.7 ms of a 32-clip evaluation batch, measured; benchmarks/RESULTS-eval.md).
        """
        gates = tf.convert_to_tensor(self.transform_gates)
        pitch_gate = gates[transforms.STAGES.index("pitch")]
        parameters = self.transformation_parameters(log_mel, training, pitch_gate=pitch_gate)
        gain, _, low_slope, high_slope = transforms.gate_parameters(
            gates, gain_db=parameters["gain"], pitch_ratio=tf.ones([]), low_slope=parameters["low_slope"],
            high_slope=parameters["high_slope"])  # the pitch ratio is gated already
        return {**parameters, "gain": gain, "low_slope": low_slope, "high_slope": high_slope}

    def shifted_prototypes(self, pitch_ratio: tf.Tensor, prototypes: tf.Tensor | None = None) -> tf.Tensor:
        """Eq. 2 for every prototype through the table of `amych_tf.reconstruction`: [B, T, K] -> [B, T, K, F].

        `prototypes` [K, F]: what to shift instead of the model's own (the blurred ones in training).
        """
        prototypes = tf.convert_to_tensor(self.prototypes) if prototypes is None else prototypes
        table = reconstruction.pitch_table(prototypes, self.mel_values)
        return reconstruction.table_pitch_shift(table, pitch_ratio)

    def reconstruct(self, parameters: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """Eq. 5 for every prototype: (gated) parameters [B, T, K] -> reconstructions [B, T, K, F]."""
        return reconstruction.reconstructions(
            self.shifted_prototypes(parameters["pitch_ratio"]), *_additive(parameters))

    def pitch_table(self) -> tf.Tensor:
        """The prototypes shifted to every ratio of the table, [J, K, F] (`reconstruction.pitch_table`)."""
        return reconstruction.pitch_table(tf.convert_to_tensor(self.prototypes), self.mel_values)

    def rec_errors_from_table(self, inputs, pitch_table) -> tf.Tensor:
        """L_rec(x, k) [B, K] in inference, `pitch_table()` given: evaluation computes it once per pass
        instead of once per batch (~2 ms each, measured; benchmarks/RESULTS-eval.md)."""
        return self._rec_errors_and_parameters(inputs, False, pitch_table)[0]

    def _rec_errors_and_parameters(self, inputs, training, table=None):
        """L_rec(x, k) [B, K] (eq. 6) and the gated parameters, each [B, T, K].

        In training (training=True) the loss compares the input and the prototypes
        blurred over mel bins by `spectral_blur` (a Gaussian of that many bins, none
        at 0): the coarse-to-fine schedule of `amych_tf.training.callbacks.Curriculum`.
        Blurring both before the transformations approximates blurring the
        reconstruction (gain and filters are smooth in frequency, the pitch shift
        a smooth warp) at the cost of [K, F] instead of [B, T, K, F]. The encoder
        always sees the input itself. Inference never blurs. `table`: `pitch_table()` if
        already computed (inference only).
        """
        if table is not None and training:
            raise ValueError("a precomputed pitch table is for inference: training may blur the prototypes")
        log_mel, mask = unpack_features(inputs)
        parameters = self.gated_transformation_parameters(log_mel, training=training)
        target, prototypes = log_mel, tf.convert_to_tensor(self.prototypes)
        if training:
            def blurred():
                blur = reconstruction.spectral_blur_matrix(self.spectral_blur, self.feature_config.n_mels)
                return tf.matmul(log_mel, blur), tf.matmul(prototypes, blur)

            # A graph branch, not a Python one: the width is a variable the curriculum sets
            # between steps; at 0 (most of training, and the paper's setting) the step skips
            # the [B, T, F] x [F, F] product.
            target, prototypes = tf.cond(self.spectral_blur > 0.0, blurred, lambda: (log_mel, prototypes))
        if table is None:
            table = reconstruction.pitch_table(prototypes, self.mel_values)
        per_frame = reconstruction.table_frame_errors(
            target, table, parameters["pitch_ratio"],
            *_additive(parameters))
        return masked_mean_over_time(per_frame, mask), parameters

    def call(self, inputs, training=None, return_details=False):
        rec_errors, parameters = self._rec_errors_and_parameters(inputs, training)
        outputs = {"rec_errors": rec_errors}
        if return_details:
            outputs.update(parameters, reconstructions=self.reconstruct(parameters))
        return outputs

    def explain_winner(self, inputs) -> dict[str, tf.Tensor]:
        """The winning prototype of each example and how it was bent onto the input (inference).

        Returns rec_errors [B, K], winner int32 [B] (argmin_k L_rec), the
        winner's gated parameters (gain, pitch_ratio, low_cutoff, low_slope,
        high_cutoff, high_slope), each [B, T], and its reconstruction [B, T, F]
        by eq. 5 through the exact `transforms.transform` (training's errors use
        the pitch table of `amych_tf.reconstruction`, within the bound its tests
        check). Costs [B, T, F] beyond the errors instead of return_details'
        [B, T, K, F].
        """
        rec_errors, parameters = self._rec_errors_and_parameters(inputs, training=False)
        winner = self.predict_classes(rec_errors)
        chosen = {name: tf.gather(value, winner, axis=2, batch_dims=1) for name, value in parameters.items()}
        prototype = tf.gather(tf.convert_to_tensor(self.prototypes), winner)[:, tf.newaxis, :]  # [B, 1, F]
        rebuilt = transforms.transform(
            prototype, gain_db=chosen["gain"], pitch_ratio=chosen["pitch_ratio"], low_slope=chosen["low_slope"],
            low_cutoff=chosen["low_cutoff"], high_slope=chosen["high_slope"], high_cutoff=chosen["high_cutoff"],
            mel_values=self.mel_values)
        return {"rec_errors": rec_errors, "winner": winner, "reconstruction": rebuilt, **chosen}

    def predict_classes(self, rec_errors: tf.Tensor) -> tf.Tensor:
        """The winning prototype of each example, argmin_k L_rec: [B, K] -> [B]."""
        return tf.argmin(rec_errors, axis=-1, output_type=tf.int32)

    # -- training ------------------------------------------------------------------------

    def _per_example_losses(self, rec_errors, labels):
        """Per-example (total, rec, ce), each [B], for the model's mode."""
        if self.mode == "supervised":
            return classification_loss(rec_errors, labels, self.beta, self.lambda_ce, self.feature_config.n_mels)
        rec = clustering_loss(rec_errors)
        return rec, rec, tf.zeros_like(rec)

    def _update_metrics(self, per_example, rec, ce, rec_errors, labels):
        winners = self.predict_classes(rec_errors)
        self.loss_tracker.update_state(per_example)
        self.rec_tracker.update_state(rec)
        self.assignment_counts.update_state(winners)
        if self.mode == "supervised":
            self.ce_tracker.update_state(ce)
            self.accuracy_tracker.update_state(tf.cast(tf.equal(winners, labels), tf.float32))
            self.average_accuracy.update_state(labels, winners)
        return distributed_logs(self.get_metrics_result())

    def get_metrics_result(self):
        """What the step logs: loss, rec, (supervised) ce, accuracy, average_accuracy, and beta.

        Keras reads the epoch's logs from this method only when its names equal the
        step's logs; otherwise it keeps the last step's logs, which under a
        distribution strategy are each replica's own result averaged over
        replicas: not the metric over all examples when replicas saw different
        numbers of them (an evaluation split that does not divide evenly), and
        never for the average accuracy. Outside the step the metric variables
        read as their sum over replicas, so these are the global results.
        The assignment counts (a vector) stay out of the logs.
        """
        logs = {"loss": self.loss_tracker.result(), "rec": self.rec_tracker.result()}
        if self.mode == "supervised":
            logs.update(
                ce=self.ce_tracker.result(),
                accuracy=self.accuracy_tracker.result(),
                average_accuracy=self.average_accuracy.result(),
            )
        logs["beta"] = self.beta
        return logs

    def train_step(self, data):
        features, labels = data
        labels = tf.cast(labels, tf.int32)
        with tf.GradientTape() as tape:
            rec_errors = self(features, training=True)["rec_errors"]
            per_example, rec, ce = self._per_example_losses(rec_errors, labels)
            # Sum over the replica's examples divided by the *global* batch size, so
            # that summing gradients over replicas gives the global-batch mean.
            loss = tf.nn.compute_average_loss(per_example)
        gradients = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        self.train_assignment_counts.update_state(self.predict_classes(rec_errors))
        return self._update_metrics(per_example, rec, ce, rec_errors, labels)

    def test_step(self, data):
        features, labels = data
        labels = tf.cast(labels, tf.int32)
        rec_errors = self(features, training=False)["rec_errors"]
        per_example, rec, ce = self._per_example_losses(rec_errors, labels)
        return self._update_metrics(per_example, rec, ce, rec_errors, labels)

    @property
    def metrics(self):
        return [
            self.loss_tracker, self.rec_tracker, self.ce_tracker, self.accuracy_tracker,
            self.average_accuracy, self.assignment_counts,
        ]

    # -- helpers for optimisers, callbacks and serialisation ----------------------------

    def decoder(self, name: str) -> TransformationDecoder:
        return {"gain": self.gain_decoder, "pitch": self.pitch_decoder, "filters": self.filters_decoder}[name]

    def set_active_transformations(self, stages) -> None:
        """Switch transformations on/off by stage name (transforms.STAGES)."""
        unknown = set(stages) - set(transforms.STAGES)
        if unknown:
            raise ValueError(f"Unknown transformations {sorted(unknown)}; choose from {transforms.STAGES}")
        self.transform_gates.assign(np.array([s in stages for s in transforms.STAGES], np.float32))

    @property
    def active_transformations(self) -> tuple[str, ...]:
        gates = np.array(self.transform_gates.numpy())
        return tuple(s for s, g in zip(transforms.STAGES, gates) if g > 0.5)

    def build_for_frames(self, num_frames: int | None = None) -> None:
        """Create all weights by running one dummy batch."""
        num_frames = num_frames or 2**self.n_pools
        self({"log_mel": tf.zeros([1, num_frames, self.feature_config.n_mels])}, training=False)

    def get_config(self):
        return {
            **super().get_config(),
            "feature_config": self.feature_config.to_dict(),
            "num_prototypes": self.num_prototypes,
            "mode": self.mode,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "lambda_ce": self.lambda_ce,
            "beta_init": self.beta_init,
            "n_pools": self.n_pools,
            **self.architecture,
        }


def optimizer_groups(weight_decay: float = 1e-6) -> list[tuple[str, str, float, float]]:
    """Parameter groups of PlayablePrototypes for GroupedAdamW: (name, path regex, weight decay, initial scale).

    Networks decay at `weight_decay`, prototypes and beta do not (section 3.4).
    Initial scales are for a run starting the curriculum at the raw stage: only
    the prototypes learn; the curriculum callback raises the other groups.
    """
    return [
        ("encoder", r"(^|/)encoder/", weight_decay, 0.0),
        ("gain_decoder", r"(^|/)gain_decoder/", weight_decay, 0.0),
        ("pitch_decoder", r"(^|/)pitch_decoder/", weight_decay, 0.0),
        ("filters_decoder", r"(^|/)filters_decoder/", weight_decay, 0.0),
        ("prototypes", r"(^|/)prototypes$", 0.0, 1.0),
        ("beta", r"(^|/)beta_free$", 0.0, 0.0),
    ]
