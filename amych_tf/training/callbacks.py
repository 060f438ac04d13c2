"""Training-time behaviour as Keras callbacks: curriculum, reassignment, non-finite guard.

Curriculum (section 3.4; docs/DESIGN.md, section 2.4; the stage table is
training/curriculum.py): raw prototypes -> gain -> pitch -> filters
-> (supervised: beta starts learning, i.e. the cross-entropy takes effect) ->
learning rate / 10. A stage ends when the epoch's training loss has not
improved for `patience` epochs (the learning-rate stage waits twice as long);
epochs that end inside a stage's warm-up do not count (as the authors).
At each activation the new transformation is switched on through the model's
gate variable (no retrace) and the learning rates of its decoder and of the
encoder rise linearly from 0.001x over `warmup_steps` batches; decoders whose
stage has not come have learning-rate scale 0 (they neither learn nor decay).

The curriculum's state lives in a non-trainable weight of the model
(`curriculum_state`), so every checkpoint, including the training backup's
(`amych_tf.training.resume.TrainingBackup`), carries it, and a resumed run continues in
the same stage.
"""

from __future__ import annotations

import math
import os

import keras
import numpy as np

from amych_tf.rundir import stage_checkpoint_filename
from amych_tf.training.curriculum import (
    BEST, BETA_LEARNING_RATE_SCALE, DECODER_OF_STAGE, LAST_STAGE_PATIENCE_FACTOR, STAGE, TRANSFORMATION_STAGES, WAIT,
    WARMUP, WARMUP_START, stages)


class Curriculum(keras.callbacks.Callback):
    """Moves a PlayablePrototypes model through the curriculum (see module docstring).

    Args:
      mode: "supervised" or "unsupervised" (sets the stage list).
      learning_rate: the base learning rate (the LR-decay stage divides it by 10).
      patience: epochs without improvement of the training loss that end a stage.
      warmup_steps: batches over which a new decoder and the encoder warm up.
      stop_stage: the last stage to run (a row of the paper's Table 1); training
        stops when it plateaus. Default: run every stage.
      checkpoint_dir: where to save the weights at the end of every stage
        (`stage-<i>-<name>.weights.h5`), or None.
      min_delta: an improvement smaller than this does not count.
      blur_bins: coarse-to-fine training. Until the pitch stage the loss
        compares input and prototypes blurred over mel bins by a Gaussian of
        this width (`PlayablePrototypes.spectral_blur`); after the pitch stage's
        warm-up the width falls linearly to 0 over `blur_anneal_steps` batches,
        and stays 0. The pitch shift first learns to align spectral envelopes,
        which give it a smooth loss, then harmonic lines, while the prototypes
        keep the lines of the clips they start from (their fine structure gets
        no gradient while it is blurred away). 0 (the paper's training) = off.
        Patience does not count during the annealing either.
      blur_anneal_steps: batches over which the blur falls to 0.
      prototypes_from: the stage from which the prototypes learn ("raw", the
        paper's, by default). Before it they keep their initial values (real
        clips, `amych_tf.initialization`), which stops the raw and gain stages
        from averaging them into a smooth envelope before the pitch shift can
        align them with the inputs (README, "Hearing fidelity").
    """

    def __init__(self, mode, learning_rate, patience=10, warmup_steps=2000, stop_stage=None,
                 checkpoint_dir=None, min_delta=0.0, prototypes_from="raw", blur_bins=0.0, blur_anneal_steps=0):
        super().__init__()
        self.blur_bins = float(blur_bins)
        self.blur_anneal_steps = int(blur_anneal_steps) if blur_bins > 0 else 0
        self.stages = stages(mode)
        for name, stage in (("stop_stage", stop_stage), ("prototypes_from", prototypes_from)):
            if stage is not None and stage not in self.stages:
                raise ValueError(f"{name} {stage!r} is not a stage of {mode} training: {self.stages}")
        self.prototypes_from = prototypes_from
        self.learning_rate = float(learning_rate)
        self.patience = int(patience)
        self.warmup_steps = int(warmup_steps)
        self.stop_stage = stop_stage or self.stages[-1]
        self.checkpoint_dir = checkpoint_dir
        self.min_delta = float(min_delta)

    # -- state --------------------------------------------------------------------------

    def _state(self) -> np.ndarray:
        return np.array(self.model.curriculum_state.numpy(), dtype=np.float64)

    def _set_state(self, state) -> None:
        self.model.curriculum_state.assign(np.asarray(state, np.float32))

    @property
    def stage(self) -> str:
        return self.stages[int(self._state()[STAGE])]

    def _reached(self, stage: str, index: int) -> bool:
        return stage in self.stages and self.stages.index(stage) <= index

    # -- applying a stage ---------------------------------------------------------------

    def _apply_stage(self, index: int, warmup_step: float) -> None:
        """Set gates, group scales and learning rate for stage `index` (idempotent)."""
        optimizer = self.model.optimizer
        if not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        active = [t for stage, ts in TRANSFORMATION_STAGES.items() if self._reached(stage, index) for t in ts]
        self.model.set_active_transformations(active)
        for transformation, decoder in DECODER_OF_STAGE.items():
            optimizer.set_group_scale(decoder, 1.0 if self._reached(transformation, index) else 0.0)
        optimizer.set_group_scale("encoder", 1.0 if active else 0.0)
        optimizer.set_group_scale("prototypes", 1.0 if self._reached(self.prototypes_from, index) else 0.0)
        optimizer.set_group_scale("beta", BETA_LEARNING_RATE_SCALE if self._reached("ce", index) else 0.0)
        decay = 0.1 if self._reached("lr_decay", index) else 1.0
        optimizer.learning_rate.assign(self.learning_rate * decay)
        self._apply_warmup(index, warmup_step)
        self.model.spectral_blur.assign(self._blur(index, warmup_step))

    def _blur(self, index: int, warmup_step: float) -> float:
        """The loss's blur width (mel bins) at batch `warmup_step` of stage `index` (see blur_bins)."""
        pitch = self.stages.index("pitch")
        if index < pitch:
            return self.blur_bins
        if index > pitch or not self.blur_anneal_steps:
            return 0.0
        progress = max(0.0, warmup_step - self.warmup_steps) / self.blur_anneal_steps
        return self.blur_bins * max(0.0, 1.0 - progress)

    def _apply_warmup(self, index: int, warmup_step: float) -> None:
        """Scale the new decoder's and the encoder's learning rate during the warm-up of stage `index`."""
        stage = self.stages[index]
        if stage not in DECODER_OF_STAGE:
            return
        warm = min(1.0, WARMUP_START + (1.0 - WARMUP_START) * warmup_step / max(self.warmup_steps, 1))
        self.model.optimizer.set_group_scale(DECODER_OF_STAGE[stage], warm)
        self.model.optimizer.set_group_scale("encoder", warm)

    def on_epoch_begin(self, epoch, logs=None):
        # Not on_train_begin: this callback must come *before* the training backup
        # (amych_tf.training.resume.TrainingBackup, so that an epoch's stage decision is in that
        # epoch's backup), and the backup restores the weights, curriculum_state
        # included, in its own on_train_begin. By the first epoch's start both have run.
        state = self._state()
        self._apply_stage(int(state[STAGE]), state[WARMUP])

    def _warming_up(self, state) -> bool:
        """True while the current stage's warm-up (and, in the pitch stage, the blur annealing) has batches left."""
        stage = self.stages[int(state[STAGE])]
        length = self.warmup_steps + (self.blur_anneal_steps if stage == "pitch" else 0)
        return state[WARMUP] < length and stage in DECODER_OF_STAGE

    def on_train_batch_begin(self, batch, logs=None):
        state = self._state()
        if self._warming_up(state):
            state[WARMUP] += 1
            self._set_state(state)
            self._apply_warmup(int(state[STAGE]), state[WARMUP])
            if self.stages[int(state[STAGE])] == "pitch" and self.blur_anneal_steps:
                self.model.spectral_blur.assign(self._blur(int(state[STAGE]), state[WARMUP]))

    def on_epoch_end(self, epoch, logs=None):
        loss = float((logs or {}).get("loss", math.nan))
        state = self._state()
        index = int(state[STAGE])
        loss = float(np.float32(loss))  # the state is float32: compare like with like
        if self._warming_up(state):
            # As the authors: patience counts from the end of the stage's warm-up, when
            # the new transformation learns at its full rate.
            if math.isfinite(loss):
                state[BEST] = min(state[BEST], loss)
            state[WAIT] = 0
        elif math.isfinite(loss) and loss < state[BEST] - self.min_delta:
            state[BEST], state[WAIT] = loss, 0
        else:
            state[WAIT] += 1
        patience = self.patience * (LAST_STAGE_PATIENCE_FACTOR if self.stages[index] == "lr_decay" else 1)
        if logs is not None:
            logs["curriculum_stage"] = index
        if state[WAIT] < patience:
            self._set_state(state)
            return
        self._save_stage_checkpoint(index)
        if self.stages[index] == self.stop_stage or index == len(self.stages) - 1:
            self._set_state(state)
            self.model.stop_training = True
            return
        index += 1
        self._set_state([index, 0, np.inf, 0])
        self._apply_stage(index, 0)

    def _save_stage_checkpoint(self, index: int) -> None:
        if self.checkpoint_dir:
            os.makedirs(self.checkpoint_dir, exist_ok=True)
            path = os.path.join(self.checkpoint_dir, stage_checkpoint_filename(index, self.stages[index]))
            self.model.save_weights(path, overwrite=True)


class Reassignment(keras.callbacks.Callback):
    """Reassigns empty clusters after each epoch (unsupervised, from DTI clustering).

    Shares are those of the epoch's *training* batches (the model's
    `train_assignment_counts`, reset here at each epoch's start): the
    validation pass, which runs before on_epoch_end, resets and refills the
    model's other counts. A prototype whose share of the epoch's assignments is below
    `threshold / K` is replaced by a copy of a donor prototype drawn with
    probability proportional to its share; both get N(0, noise) noise, and the
    copy takes over the donor's Adam moments and the output weights (and their
    moments) of every decoder, so it continues from the donor's state.
    """

    def __init__(self, threshold=0.02, noise=0.01, seed=0):
        super().__init__()
        self.threshold = threshold
        self.noise = noise
        self.rng = np.random.default_rng(seed)
        self.history = []  # (epoch, [(reset prototype, donor), ...])

    def on_epoch_begin(self, epoch, logs=None):
        self.model.train_assignment_counts.reset_state()

    def on_epoch_end(self, epoch, logs=None):
        model = self.model
        counts = np.array(model.train_assignment_counts.result())
        total = counts.sum()
        if total <= 0:
            return
        shares = counts / total
        num_prototypes = len(shares)
        empty = np.flatnonzero(shares < self.threshold / num_prototypes)
        if empty.size == 0 or empty.size == num_prototypes:
            return
        pairs = []
        for k in empty:
            donor = int(self.rng.choice(num_prototypes, p=shares))
            pairs.append((int(k), donor))
            self._copy(int(k), donor)
        self.history.append((epoch, pairs))
        if logs is not None:
            logs["reassigned"] = len(pairs)

    def _copy(self, target: int, donor: int) -> None:
        model, optimizer = self.model, self.model.optimizer
        prototypes = np.array(model.prototypes.numpy())
        num_mels = prototypes.shape[1]
        prototypes[target] = prototypes[donor] + self.rng.normal(0.0, self.noise, num_mels)
        prototypes[donor] = prototypes[donor] + self.rng.normal(0.0, self.noise, num_mels)
        model.prototypes.assign(prototypes)
        for moment in optimizer.moments(model.prototypes):
            values = np.array(moment.numpy())
            values[target] = values[donor]
            moment.assign(values)
        for name in DECODER_OF_STAGE:
            output = model.decoder(name).output_conv
            per_prototype = output.filters // model.num_prototypes
            columns_target = slice(target * per_prototype, (target + 1) * per_prototype)
            columns_donor = slice(donor * per_prototype, (donor + 1) * per_prototype)
            for variable in (output.kernel, output.bias):
                for tensor in (variable, *optimizer.moments(variable)):
                    values = np.array(tensor.numpy())
                    values[..., columns_target] = values[..., columns_donor]
                    tensor.assign(values)


class FidelityMetrics(keras.callbacks.Callback):
    """Hearing fidelity of the validation clips, every `every_epochs` epochs, in the epoch's logs.

    Adds val_fine_structure_explained, val_crispness_median, val_crispness_min,
    val_pitch_r and val_pitch_slope (amych_tf.metrics; the pitch values only
    when the data know the notes and the pitch stage is on). Keras' TensorBoard
    callback, which must come after this one, writes them to logs/validation
    as `epoch_<name>`, next to val_loss; History and CSV loggers get them too.

    Args:
      validation: `amych_tf.data.evaluation_dataset(..., with_metadata=True)` of the validation split.
      class_averages: [C, F] average training spectrum of each class (crispness is relative to it).
      every_epochs: 0 never.
    Unsupervised models map each prototype to the majority class of the
    validation clips it wins (evaluation uses the training majority).
    """

    def __init__(self, validation, class_averages, every_epochs=1):
        super().__init__()
        self.validation = validation
        self.class_averages = np.asarray(class_averages)
        self.every_epochs = every_epochs

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not self.every_epochs or (epoch + 1) % self.every_epochs:
            return
        from amych_tf import evaluation, metrics

        model = self.model
        explanations = evaluation.collect_explanations(model, self.validation)
        winners = explanations["rec_errors"].argmin(1)
        if model.mode == "supervised":
            classes = np.where(np.arange(model.num_prototypes) < len(self.class_averages),
                               np.arange(model.num_prototypes), -1)
        else:
            classes = metrics.majority_mapping(explanations["labels"], winners, model.num_prototypes)
        fidelity = evaluation.fidelity_summary(model, explanations, self.class_averages, classes)
        values = {
            "val_fine_structure_explained": fidelity["fine_structure_explained"],
            "val_crispness_median": fidelity["prototype_crispness"]["median"],
            "val_crispness_min": fidelity["prototype_crispness"]["min"],
            "val_pitch_r": fidelity["pitch_tracking"]["r_median"],
            "val_pitch_slope": fidelity["pitch_tracking"]["slope_median"],
        }
        logs.update({name: value for name, value in values.items() if value is not None})


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


class NonFiniteGuard(keras.callbacks.Callback):
    """Stops training at the first non-finite batch loss, before anything is saved.

    Keras' TerminateOnNaN only sets `stop_training`, after which epoch-end
    callbacks (checkpoints) still run and could write NaN prototypes; raising
    here ends `fit` at once, so the last checkpoint stays the last finite one.
    """

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise NonFiniteLossError(
                f"loss became {float(loss)} at batch {batch}; stopped before saving anything. "
                "Lower --learning_rate or check the data (dataset_info.json, non-finite log-Mel values)."
            )


class TrainingScalars(keras.callbacks.Callback):
    """TensorBoard scalars Keras does not log: learning rate per group, beta, curriculum stage."""

    def __init__(self, log_dir):
        super().__init__()
        self.log_dir = log_dir
        self.writer = None

    def on_train_begin(self, logs=None):
        import tensorflow as tf

        self.writer = tf.summary.create_file_writer(self.log_dir)

    def on_epoch_end(self, epoch, logs=None):
        import tensorflow as tf

        optimizer = self.model.optimizer
        base = float(optimizer.learning_rate.numpy())
        with self.writer.as_default(step=epoch):
            for name in optimizer.group_names:
                tf.summary.scalar(f"learning_rate/{name}", base * optimizer.get_group_scale(name))
            tf.summary.scalar("beta", float(self.model.beta.numpy()))
            tf.summary.scalar("curriculum_stage", float(self.model.curriculum_state.numpy()[STAGE]))
        self.writer.flush()


class TensorBoardMedia(keras.callbacks.Callback):
    """Images, audio and histograms in TensorBoard every `every_epochs` epochs.

    Over `validation` (padded full-clip batches of amych_tf.data.evaluation_dataset):
      images   prototype gallery; input / reconstruction / winning prototype with the
               winner's transformations over time (plots.winner_explanation)
               for the first `num_examples` clips; confusion matrix
               (true class x winning prototype); assignment histogram;
      audio    every prototype held for `audio_seconds` and rendered through the
               inverse front end (Griffin-Lim), so it can be heard in TensorBoard;
      histograms  gain, pitch ratio and filter parameters of the winning prototype
               over the valid frames of the validation clips.
    """

    def __init__(self, log_dir, validation, dataset_info, every_epochs=5, num_examples=4, audio_seconds=1.0,
                 griffin_lim_iters=32):
        super().__init__()
        self.log_dir = log_dir
        self.validation = validation
        self.info = dataset_info
        self.every_epochs = every_epochs
        self.num_examples = num_examples
        self.audio_seconds = audio_seconds
        self.griffin_lim_iters = griffin_lim_iters
        self.writer = None

    def on_train_begin(self, logs=None):
        import tensorflow as tf

        self.writer = tf.summary.create_file_writer(self.log_dir)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_epochs == 0:
            self.write(epoch)

    def write(self, step):
        import tensorflow as tf

        from amych_tf import audio_io, plots

        model = self.model
        names = model.class_names if model.mode == "supervised" and model.class_names else None
        prototypes = np.array(model.prototypes.numpy())
        parameter_names = ("gain", "pitch_ratio", "low_slope", "low_cutoff", "high_slope", "high_cutoff")

        def image(tag, figure):
            png = plots.figure_to_png(figure)
            tf.summary.image(tag, tf.expand_dims(tf.image.decode_png(png, channels=4), 0))

        labels, winners, parameters = [], [], {name: [] for name in parameter_names}
        shown = 0
        with self.writer.as_default(step=step):
            for features, batch_labels in self.validation:
                outputs = model(features, training=False, return_details=True)
                batch_winners = np.argmin(outputs["rec_errors"].numpy(), axis=1)
                mask = features["mask"].numpy() > 0
                rows = np.arange(len(batch_winners))
                for name in parameter_names:
                    values = outputs[name].numpy()[rows, :, batch_winners]  # [examples, T]
                    parameters[name].append(values[mask])
                for i in range(min(self.num_examples - shown, len(batch_winners))):
                    k, frames = batch_winners[i], int(mask[i].sum())
                    label = self.info.class_names[int(batch_labels[i])]
                    title = f"{label}: prototype {names[k] if names else k}, L_rec {outputs['rec_errors'][i, k]:.4f}"
                    image(f"reconstruction/{shown + i}", plots.winner_explanation(
                        features["log_mel"][i, :frames], outputs["reconstructions"][i, :frames, k],
                        prototypes[k], {name: outputs[name][i, :frames, k] for name in parameter_names},
                        self.info.features, title))
                shown += min(self.num_examples - shown, len(batch_winners))
                labels.append(np.asarray(batch_labels))
                winners.append(batch_winners)
            labels, winners = np.concatenate(labels), np.concatenate(winners)
            confusion = np.zeros((self.info.num_classes, model.num_prototypes), np.int64)
            np.add.at(confusion, (labels, winners), 1)
            image("confusion_matrix", plots.confusion_figure(
                confusion, self.info.class_names, names or [str(k) for k in range(model.num_prototypes)]))
            image("assignments", plots.assignment_histogram(np.bincount(winners, minlength=model.num_prototypes),
                                                            names))
            image("prototype_gallery", plots.prototype_gallery(prototypes, self.info.features, names))
            for name in parameter_names:
                tf.summary.histogram(f"transformations/{name}", np.concatenate(parameters[name]))
            config = self.info.features
            audio = audio_io.to_audio(audio_io.held_prototypes(prototypes, config, self.audio_seconds), config,
                                    self.griffin_lim_iters)
            tf.summary.audio("prototype_audio", audio[..., None], config.sample_rate, max_outputs=len(prototypes))
        self.writer.flush()
