"""What training, evaluation, listening and export may ask of a model: `ModelContract`.

Every model `--model=NAME` names (amych_tf.registry) is a subclassed keras.Model
that derives `ModelContract` (through `model.PrebuiltModel`) and is registered
serializable with `get_config`, so a run's config.json rebuilds it. It has:

* `feature_config` (amych_tf.spectral.FeatureConfig), `num_classes`, `class_names`;
* `mode`: "supervised" if it names classes (`predict_classes`), "unsupervised"
  if it only clusters (evaluation then maps clusters to classes by the training
  majority); `num_prototypes`: how many values its predictions take;
* `build_for_frames(num_frames)`: creates every weight with a dummy batch;
* `from_train_config(config, info)`: a new model for a `TrainConfig` and a
  dataset (after `prepare_construction`, which may read the data, outside the
  distribution strategy's scope); `training_optimizer(config)`;
* inputs {"log_mel": [B, T, F], "mask": [B, T]} (T a multiple of 16) and integer
  labels [B]; `train_step` / `test_step` return logs with "loss" (and "accuracy"
  when it classifies).

Capabilities, class attributes that the callers read instead of probing for methods:

  playable            prototypes in log-Mel space that reconstruct inputs: rec_errors from `call`,
                      `explain_winner`, `prototypes`, the curriculum, hearing fidelity, listening
                      to inputs (PlayablePrototypes)
  clusters            `embed(features) -> [B, D]`, `fit_clusters(embeddings, seed)` (K-means, centres
                      kept in the weights), `predict_clusters(features) -> [B]` (autoencoder, APNet)
  decodes_prototypes  `decode_prototypes(train_split)` and `prototype_classes()`: latent prototypes
                      heard through a decoder (APNet)
  refinable           `refined_copy()`: prototype refinement after training (APNet)
  exportable          a SavedModel for TF Serving (amych_tf.serving; PlayablePrototypes)
  reads_waveforms     waveforms in, not log-Mels: its data pipeline, training, metrics and listening
                      are its own, in the module `registry.pipeline(name)` names (the waveform VAE),
                      which offers `check_data(info, data_dir)` (ValueError for data it cannot read),
                      `train(config, info, flags_text) -> summary`, `evaluate(model, data_dir, split,
                      batch_size, info) -> summary`, `summary_line(summary)` and `listen(model, data_dir,
                      out_dir, inputs, morph, batch_size)`
  modes               the --mode values it trains with
"""

from __future__ import annotations

from typing import ClassVar

# Training settings: with labels (prototype k is class k) or without (clusters).
MODES = ("supervised", "unsupervised")


class ModelContract:
    """The interface above; defaults are those of a classifier with no extra capability."""

    registry_name: ClassVar[str] = ""
    playable: ClassVar[bool] = False
    clusters: ClassVar[bool] = False
    decodes_prototypes: ClassVar[bool] = False
    refinable: ClassVar[bool] = False
    exportable: ClassVar[bool] = False
    reads_waveforms: ClassVar[bool] = False
    modes: ClassVar[tuple[str, ...]] = ("supervised",)

    @classmethod
    def prepare_construction(cls, config, info) -> dict:
        """Keyword arguments of the constructor that depend on the data (read here, once); none by default."""
        del config, info
        return {}

    @classmethod
    def from_train_config(cls, config, info, **prepared):
        """A new, unbuilt model for `config` (a TrainConfig) and `info` (the dataset's DatasetInfo)."""
        del config
        return cls(info.features, info.num_classes, class_names=info.class_names, **prepared)

    def training_optimizer(self, config):
        """The optimizer `amych_tf.training` compiles the model with: its paper's (`default_optimizer`)."""
        return self.default_optimizer(config.learning_rate)

    @property
    def classifies(self) -> bool:
        """Whether `predict_classes` names classes (else the model only clusters)."""
        return self.mode == "supervised"

    def prototype_names(self) -> list[str]:
        """A name per prediction value: the class names when it classifies, else cluster<k>."""
        if self.mode == "supervised" and self.class_names:
            return list(self.class_names)
        return [f"cluster{k}" for k in range(self.num_prototypes)]

    def predict_classes(self, features):
        raise NotImplementedError(f"{type(self).__name__} does not classify")

    def predict_clusters(self, features):
        raise NotImplementedError(f"{type(self).__name__} has no clusters")
