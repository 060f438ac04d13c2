"""Exporting a trained model as a SavedModel for TF Serving.

`export_run("runs/sol_sup", "saved_models/sol_sup")` (or `python -m amych_tf.export
--model_dir=runs/sol_sup --export_dir=saved_models/sol_sup`, amych_tf.cli.export)
writes `<export_dir>/<version>/` (TF Serving's layout; version = the next
integer after the largest one already there), built with Keras'
`ExportArchive`. The SavedModel needs TensorFlow only (not amych_tf, not
Keras): the log-Mel front end, the tiling of short clips and the padding that
evaluation uses are part of its graph, so it gives the numbers
`amych_tf.evaluation` gives on the same audio.

Signatures (inputs float32; any batch size; all clips of a batch the same length):

  serving_default   waveform [batch, samples] at the model's sample rate
  classify_logmel   log_mel [batch, frames, n_mels] (the scaled log-Mel of amych_tf.spectral)
      -> probabilities [batch, classes]  softmax(-beta F L_rec) over prototypes, summed per class
         class_id      [batch] int32     class of the winning prototype (-1: a prototype that
                                         won no training clip, unsupervised only)
         class_name    [batch] string    ("unassigned" for -1)
         prototype     [batch] int32     winning prototype argmin_k L_rec
         rec_errors    [batch, K]        L_rec of every prototype (eq. 6)
  explain           waveform [batch, samples]
      -> log_mel, reconstruction [batch, frames, n_mels]   the input and the winner's reconstruction
         prototype, class_name, prototype_spectrum [batch, n_mels]
         gain, pitch_ratio, low_cutoff, low_slope, high_cutoff, high_slope [batch, frames]
                                                           the winner's transformations per frame

Inputs are checked inside the graph; a wrong rank, an empty batch, fewer than
n_fft samples (or zero frames), a wrong number of mel bins, or NaN/Inf values
fail with InvalidArgument and a message saying which. Waveforms shorter than
16 frames are tiled up to 16 frames, as data_tools.prepare does; log-Mels are
padded by tiling to a multiple of 16 frames with the padding masked out, as
amych_tf.data.evaluation_dataset does.

Unsupervised models: prototypes are named by the majority class of the
training clips they win (the mapping `amych_tf.evaluation` uses), computed here
on the train split of `data_dir` (default: the dataset the model was trained
on). Their probabilities use beta = softplus(beta_init), which does not learn
without labels: read them as a soft score.

Beside the SavedModel: assets.extra/tf_serving_warmup_requests (one
PredictionLog per signature, 1 s of audio, made with tensorflow-serving-api;
TF Serving replays them at load time) and assets.extra/amych_tf.json (feature
parameters, class names, prototype classes, the checkpoint exported).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile

UNASSIGNED = "unassigned"
WARMUP_FILENAME = "tf_serving_warmup_requests"
METADATA_FILENAME = "amych_tf.json"
SIGNATURES = ("serving_default", "classify_logmel", "explain")
EXPLAINED_PARAMETERS = ("gain", "pitch_ratio", "low_cutoff", "low_slope", "high_cutoff", "high_slope")
SERVING_API_INSTALL = 'pip install --no-deps "tensorflow-serving-api==2.21.*"'


class ExportError(ValueError):
    """A model dir or export dir that cannot be exported; reported as one line."""


def next_version(export_dir: str) -> int:
    """1 + the largest integer sub-directory of export_dir (1 if none)."""
    if not os.path.isdir(export_dir):
        return 1
    versions = [int(name) for name in os.listdir(export_dir) if re.fullmatch(r"\d+", name)]
    return max(versions, default=0) + 1


class ServingGraph:
    """The exported functions, over a PlayablePrototypes model and its prototype -> class mapping."""

    def __init__(self, model, classes, class_names):
        import numpy as np
        import tensorflow as tf

        from amych_tf import data

        self.model = model
        self.config = model.feature_config
        self.multiple_of = 2**model.n_pools
        self.min_samples = self.config.num_samples(data.MIN_FRAMES)
        classes = np.asarray(classes, np.int32)
        self.prototype_classes = tf.constant(classes)
        self.class_names = tf.constant(list(class_names) + [UNASSIGNED])  # index -1 -> the last
        self.num_classes = len(class_names)

    # -- input checks: InvalidArgument with a readable message ---------------------------

    def _checked_waveform(self, waveform):
        import tensorflow as tf

        rate, n_fft = self.config.sample_rate, self.config.n_fft
        rank = tf.debugging.assert_rank(
            waveform, 2, message="waveform must be float32 [batch, samples] (mono, one row per clip)")
        # Everything below depends on the check (an EnsureShape here would fail first, less readably).
        with tf.control_dependencies([rank]):
            waveform = tf.identity(waveform)
        waveform = tf.reshape(waveform, tf.stack([tf.shape(waveform)[0], -1]))  # static rank 2
        shape = tf.shape(waveform)
        checks = [
            tf.debugging.assert_positive(shape[0], message="empty batch: waveform has no clips"),
            tf.debugging.assert_greater_equal(
                shape[1], n_fft, message=f"audio too short: at least {n_fft} samples (one frame, "
                f"{1000 * n_fft / rate:.0f} ms at {rate} Hz) are needed"),
            tf.debugging.assert_all_finite(waveform, message="waveform has NaN or Inf values"),
        ]
        with tf.control_dependencies(checks):
            return tf.identity(waveform)

    def _checked_log_mel(self, log_mel):
        import tensorflow as tf

        n_mels = self.config.n_mels
        rank = tf.debugging.assert_rank(log_mel, 3, message=f"log_mel must be float32 [batch, frames, {n_mels}]")
        with tf.control_dependencies([rank]):
            log_mel = tf.identity(log_mel)
        shape = tf.shape(log_mel)
        checks = [
            tf.debugging.assert_equal(shape[2], n_mels, message=f"log_mel must have {n_mels} mel bins"),
            tf.debugging.assert_positive(shape[0], message="empty batch: log_mel has no clips"),
            tf.debugging.assert_positive(shape[1], message="log_mel has no frames"),
            tf.debugging.assert_all_finite(log_mel, message="log_mel has NaN or Inf values"),
        ]
        with tf.control_dependencies(checks):
            log_mel = tf.identity(log_mel)
        return tf.reshape(log_mel, tf.stack([shape[0], shape[1], n_mels]))  # static mel axis

    # -- the model on checked inputs -------------------------------------------------------

    def features(self, waveform):
        """Checked waveform -> log-Mel, clips shorter than 16 frames tiled first (as data_tools.prepare)."""
        import tensorflow as tf

        from amych_tf import spectral

        waveform = self._checked_waveform(waveform)
        samples = tf.shape(waveform)[1]
        indices = tf.range(tf.maximum(samples, self.min_samples)) % samples
        return spectral.log_mel(tf.gather(waveform, indices, axis=1), self.config)

    def _run(self, log_mel, return_details=False):
        """(model outputs on the tile-padded batch, number of real frames)."""
        import tensorflow as tf

        from amych_tf import data

        frames = tf.shape(log_mel)[1]
        padded, mask = data.tile_pad(log_mel, tf.fill([tf.shape(log_mel)[0]], frames), self.multiple_of)
        outputs = self.model({"log_mel": padded, "mask": mask}, training=False, return_details=return_details)
        return outputs, frames

    def _classification(self, rec_errors):
        import tensorflow as tf

        winner = self.model.predict_classes(rec_errors)
        logits = -self.model.beta * self.config.n_mels * rec_errors
        class_of_prototype = tf.one_hot(self.prototype_classes, self.num_classes)  # [K, C]; -1 -> zeros
        class_id = tf.gather(self.prototype_classes, winner)
        return {
            "probabilities": tf.matmul(tf.nn.softmax(logits), class_of_prototype),
            "class_id": class_id,
            "class_name": tf.gather(self.class_names, class_id % (self.num_classes + 1)),
            "prototype": winner,
            "rec_errors": rec_errors,
        }

    def classify_logmel(self, log_mel):
        outputs, _ = self._run(self._checked_log_mel(log_mel))
        return self._classification(outputs["rec_errors"])

    def classify_waveform(self, waveform):
        outputs, _ = self._run(self.features(waveform))
        return self._classification(outputs["rec_errors"])

    def explain(self, waveform):
        import tensorflow as tf

        log_mel = self.features(waveform)
        outputs, frames = self._run(log_mel, return_details=True)
        winner = self.model.predict_classes(outputs["rec_errors"])

        def of_winner(per_prototype):  # [B, T, K, ...] -> [B, frames, ...]
            per_prototype = tf.experimental.numpy.moveaxis(per_prototype, 2, 1)
            return tf.gather(per_prototype, winner, batch_dims=1)[:, :frames]

        explanation = {name: of_winner(outputs[name]) for name in EXPLAINED_PARAMETERS}
        explanation.update(
            log_mel=log_mel,
            reconstruction=of_winner(outputs["reconstructions"]),
            prototype=winner,
            class_name=self._classification(outputs["rec_errors"])["class_name"],
            prototype_spectrum=tf.gather(tf.convert_to_tensor(self.model.prototypes), winner),
        )
        return explanation


def warmup_requests(config, seconds: float = 1.0) -> list[bytes]:
    """Serialized PredictionLogs, one per signature, on a deterministic tone (tensorflow-serving-api)."""
    import numpy as np
    import tensorflow as tf

    from amych_tf import spectral

    try:
        from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2
    except ImportError:
        raise ExportError(f"writing TF Serving warm-up requests needs tensorflow-serving-api: {SERVING_API_INSTALL}"
                          ) from None
    t = np.arange(int(seconds * config.sample_rate)) / config.sample_rate
    waveform = (0.1 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)[None]
    inputs = {
        "serving_default": {"waveform": waveform},
        "classify_logmel": {"log_mel": spectral.log_mel(waveform, config).numpy()},
        "explain": {"waveform": waveform},
    }
    records = []
    for signature, tensors in inputs.items():
        request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(signature_name=signature))
        for name, value in tensors.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
        records.append(log.SerializeToString())
    return records


def export_model(model, export_dir: str, *, classes=None, version: int | None = None, source: dict | None = None,
                 verbose: bool = False) -> str:
    """Write the SavedModel of `model` to `<export_dir>/<version>/`; return that path.

    Written to a temporary sibling and renamed when complete: a failed export
    leaves nothing behind, and TF Serving never sees a half-written version.
    """
    from amych_tf import evaluation, reconstruction

    if not model.exportable:
        raise ExportError(f"{type(model).__name__} cannot be exported for serving (PlayablePrototypes only)")
    if classes is None:
        classes = evaluation.prototype_classes(model)
    version = version or next_version(export_dir)
    final = os.path.join(export_dir, str(version))
    if os.path.exists(final):
        raise ExportError(f"{final} exists already: choose another --export_version")
    class_names = list(model.class_names or [f"class{c}" for c in range(model.num_classes)])
    graph = ServingGraph(model, classes, class_names)
    records = warmup_requests(model.feature_config)  # before any output: it may fail on a missing package

    with reconstruction.portable_kernels():  # TF Serving runs no XLA-only functions by default
        return _write_archive(model, graph, records, export_dir, version, final, classes, class_names, source,
                              verbose)


def _write_archive(model, graph, records, export_dir, version, final, classes, class_names, source, verbose):
    """The SavedModel, TF Serving's warm-up requests and our metadata, staged and renamed (export_model)."""
    import keras
    import tensorflow as tf

    from amych_tf import data

    archive = keras.export.ExportArchive()
    archive.track(model)
    waveform_spec = [tf.TensorSpec(shape=None, dtype=tf.float32, name="waveform")]
    # The first endpoint becomes serving_default as well; naming it so keeps one signature.
    archive.add_endpoint("serving_default", lambda waveform: graph.classify_waveform(waveform), waveform_spec)
    archive.add_endpoint("classify_logmel", lambda log_mel: graph.classify_logmel(log_mel),
                         [tf.TensorSpec(shape=None, dtype=tf.float32, name="log_mel")])
    archive.add_endpoint("explain", lambda waveform: graph.explain(waveform), waveform_spec)

    os.makedirs(export_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{version}.tmp-", dir=export_dir)
    try:
        archive.write_out(staging, verbose=verbose)
        extra = os.path.join(staging, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        with tf.io.TFRecordWriter(os.path.join(extra, WARMUP_FILENAME)) as writer:
            for record in records:
                writer.write(record)
        metadata = {
            "feature_config": model.feature_config.to_dict(),
            "class_names": class_names,
            "prototype_classes": [int(c) for c in classes],
            "mode": model.mode,
            "num_prototypes": model.num_prototypes,
            "min_frames": data.MIN_FRAMES,
            "signatures": list(SIGNATURES),
            "source": source or {},
        }
        with open(os.path.join(extra, METADATA_FILENAME), "w", encoding="utf-8") as f:
            json.dump(metadata, f, indent=2)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def export_run(model_dir: str, export_dir: str, *, checkpoint: str | None = None, data_dir: str | None = None,
               version: int | None = None, batch_size: int = 32) -> str:
    """Export the model of a training run (amych_tf.rundir); `data_dir` (default: the run's dataset)
    names an unsupervised model's prototypes."""
    from amych_tf import evaluation, registry
    from amych_tf.rundir import RunDir

    model, config = registry.load_model(model_dir, checkpoint)
    if not model.exportable:
        raise ExportError(f"{type(model).__name__} cannot be exported for serving (PlayablePrototypes only)")
    classes = evaluation.prototype_classes(model, data_dir or evaluation.default_data_dir(config), batch_size)
    source = {"model_dir": os.path.abspath(model_dir),
              "checkpoint": os.path.abspath(RunDir(model_dir).resolve_checkpoint(checkpoint))}
    return export_model(model, export_dir, classes=classes, version=version, source=source)
