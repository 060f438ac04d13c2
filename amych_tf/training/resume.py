"""Resuming a killed training run where it stopped.

`TrainingBackup` replaces Keras' `BackupAndRestore`, which loses things when the
process is killed (SIGKILL, OOM killer, preemption):

  * it writes `latest.weights.h5` and then `training_metadata.json` in place: a
    kill during the first leaves a weights file the rerun cannot read (it
    crashes), a kill between the two leaves the weights of epoch e + 1 with the
    epoch number e (the rerun trains epoch e + 1 again on top of them);
  * the rerun forgets the best validation loss of `ModelCheckpoint(save_best_only)`
    (and `EarlyStopping`'s patience), so the first epoch after a resume replaces
    `best.weights.h5` even when it is worse; and a checkpoint file being written
    at the kill stays half-written;
  * it deletes the backup when `fit` returns, before the final evaluation: a kill
    during that evaluation made the rerun train again from scratch.

Here every backup is one directory, `backup/epoch-<n>/`, written under a
temporary name and renamed when complete (the rename is the commit; older
backups are deleted after it). It holds the weights (model, optimizer, curriculum
state), the epoch, the best/wait counters of the `tracked` callbacks and a copy
of their checkpoint files, which a restore puts back in place.

What is not restored: the position in the training data's random stream. A
rerun builds a fresh dataset, whose shuffles, crops and augmentation start again
at the stream of the first epoch (amych_tf.data), so the epochs after a resume
see other (equally random) batches than an uninterrupted run would: the run
goes on from the same weights, optimizer state, epoch and curriculum stage, but
its later updates are not those of an uninterrupted run. Replaying
the stream would mean mimicking how many iterators Keras' `fit` creates per
epoch (it differs between the first epoch and the others), or a data pipeline
keyed by the epoch number.

When `fit` ends the callback writes a last backup marked with the final epoch
instead of deleting its directory: a rerun after a kill during the final
evaluation restores the trained model, trains no epoch and evaluates it again.
`discard()` removes the directory once the run's results are written, so
running a finished command again trains a new model, as before.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile

import keras

WEIGHTS_FILENAME = "model.weights.h5"
STATE_FILENAME = "state.json"
# Callback attributes that carry over a restart (ModelCheckpoint, EarlyStopping, the baselines' selection).
TRACKED_ATTRIBUTES = ("best", "best_tie_breaker", "wait", "best_epoch", "_batches_seen_since_last_saving")
_BACKUP_NAME = re.compile(r"^epoch-(\d+)$")


class TrainingBackup(keras.callbacks.Callback):
    """Back up the whole training state at every epoch end; restore it when `fit` starts again.

    Args:
      backup_dir: a directory of its own (e.g. `<model_dir>/backup`).
      tracked: callbacks whose counters (TRACKED_ATTRIBUTES) and, for ModelCheckpoint,
        output file are backed up and restored.

    Put it after every callback that changes the model, the tracked counters or the
    checkpoint files at epoch end, so that a backup holds the state after all of them.
    """

    def __init__(self, backup_dir: str, tracked=()):
        super().__init__()
        self.backup_dir = backup_dir
        self.tracked = list(tracked)
        self._restored_counters = None

    # -- writing ---------------------------------------------------------------------

    def on_epoch_end(self, epoch, logs=None):
        self._save(epoch + 1)

    def on_train_end(self, logs=None):
        self._save(self.params["epochs"])

    def _checkpoint_files(self) -> list[str | None]:
        return [getattr(callback, "filepath", None) for callback in self.tracked]

    def _save(self, epoch: int) -> None:
        final = os.path.join(self.backup_dir, f"epoch-{epoch}")
        if os.path.isdir(final):
            # The same state, saved already: at the end of a run that trained every epoch (the
            # last epoch's backup), or of a rerun that trained none. Replacing it would leave a
            # moment without any complete backup.
            return
        os.makedirs(self.backup_dir, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".epoch-", dir=self.backup_dir)
        self.model.save_weights(os.path.join(staging, WEIGHTS_FILENAME))
        counters = [{name: _plain(getattr(callback, name)) for name in TRACKED_ATTRIBUTES if hasattr(callback, name)}
                    for callback in self.tracked]
        files = []
        for index, path in enumerate(self._checkpoint_files()):
            copied = path is not None and os.path.isfile(path)
            if copied:
                shutil.copyfile(path, os.path.join(staging, f"checkpoint-{index}"))
            files.append(copied)
        with open(os.path.join(staging, STATE_FILENAME), "w", encoding="utf-8") as f:
            json.dump({"epoch": epoch, "counters": counters, "checkpoint_files": files}, f)
        os.rename(staging, final)
        for name in os.listdir(self.backup_dir):  # older backups, and staging left by a kill
            if name != os.path.basename(final):
                shutil.rmtree(os.path.join(self.backup_dir, name), ignore_errors=True)

    # -- restoring -------------------------------------------------------------------

    def latest(self) -> str | None:
        """The newest complete backup directory, or None."""
        if not os.path.isdir(self.backup_dir):
            return None
        epochs = [int(match[1]) for match in map(_BACKUP_NAME.match, os.listdir(self.backup_dir)) if match]
        return os.path.join(self.backup_dir, f"epoch-{max(epochs)}") if epochs else None

    def on_train_begin(self, logs=None):
        directory = self.latest()
        if directory is None:
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(os.path.join(directory, WEIGHTS_FILENAME))
        with open(os.path.join(directory, STATE_FILENAME), encoding="utf-8") as f:
            state = json.load(f)
        for index, (path, copied) in enumerate(zip(self._checkpoint_files(), state["checkpoint_files"])):
            if path is None:
                continue
            if copied:  # through a temp file: a kill now leaves the backup's copy to restore again
                shutil.copyfile(os.path.join(directory, f"checkpoint-{index}"), path + ".tmp")
                os.replace(path + ".tmp", path)
            elif os.path.exists(path):  # written after this backup: not part of the restored run
                os.remove(path)
        # Read by fit after on_train_begin: the first epoch to run.
        self.model._initial_epoch = state["epoch"]
        # The tracked callbacks reset their counters in their own on_train_begin,
        # which may come after this one: restored at the first epoch's start.
        self._restored_counters = state["counters"]

    def on_epoch_begin(self, epoch, logs=None):
        if self._restored_counters is not None:
            for callback, counters in zip(self.tracked, self._restored_counters):
                for name, value in counters.items():
                    setattr(callback, name, value)
            self._restored_counters = None

    def discard(self) -> None:
        """Delete every backup: the run is complete."""
        shutil.rmtree(self.backup_dir, ignore_errors=True)


def _plain(value):
    """A counter as a JSON number (Keras keeps NumPy scalars)."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return value.item() if hasattr(value, "item") else float(value)
