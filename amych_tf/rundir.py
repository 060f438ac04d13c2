"""The layout of a training run's directory (`--model_dir`), in one place.

    flags.txt                                  the flags of the run (usable as --flagfile)
    config.json                                model config, dataset, and the run's TrainConfig ("train")
    metrics.json, metrics.png                  test-split metrics of the selected checkpoint
    checkpoints/best.weights.h5                best validation loss (ours); baselines: best validation
                                               accuracy, or validation OA after K-means (autoencoder)
    checkpoints/best_clustering.weights.h5     APNet: best validation OA of APNet + K-means
    checkpoints/latest.weights.h5              every --checkpoint_freq epochs
    checkpoints/stage-<i>-<name>.weights.h5    the end of curriculum stage i (training/curriculum.py)
    checkpoints/refined/                       APNet's prototype refinement, before it is adopted
    backup/                                    training state at the last epoch end (amych_tf.training.resume)
    logs/, logs/train, logs/media              TensorBoard
    eval-<split>.json, table1-<split>.md       written by evaluate and report
    listen/                                    the listening page (listen --html)
    workers/<type>-<id>/                       what non-chief workers write (multi-worker training)

Training writes it (amych_tf.training.trainer); evaluation, listening, export and
the report read it through `RunDir`, so a file's name is spelled here only.
"""

from __future__ import annotations

import glob
import json
import os
import re

CONFIG_FILENAME = "config.json"
FLAGS_FILENAME = "flags.txt"
METRICS_FILENAME = "metrics.json"
CHECKPOINT_SUFFIX = ".weights.h5"
STAGE_CHECKPOINT = re.compile(r"stage-(\d+)-(\w+)\.weights\.h5$")


class RunDirError(ValueError):
    """A run directory without the file asked for; reported as one line."""


def stage_checkpoint_filename(index: int, stage: str) -> str:
    """The file name of the checkpoint saved when curriculum stage `index` (named `stage`) ends."""
    return f"stage-{index}-{stage}{CHECKPOINT_SUFFIX}"


def checkpoint_file(directory: str, name: str) -> str:
    """<directory>/<name>.weights.h5."""
    return os.path.join(directory, name + CHECKPOINT_SUFFIX)


def write_json(path: str, value) -> None:
    """Write JSON to a temporary file and rename it: a kill never leaves a half-written file."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)
    os.replace(tmp, path)


class RunDir:
    """Paths of one run directory (see the module docstring); creates nothing by itself."""

    def __init__(self, path: str):
        self.path = path

    def __repr__(self) -> str:
        return f"RunDir({self.path!r})"

    @property
    def config(self) -> str:
        return os.path.join(self.path, CONFIG_FILENAME)

    @property
    def flags(self) -> str:
        return os.path.join(self.path, FLAGS_FILENAME)

    @property
    def metrics(self) -> str:
        return os.path.join(self.path, METRICS_FILENAME)

    @property
    def checkpoints(self) -> str:
        return os.path.join(self.path, "checkpoints")

    @property
    def refined_checkpoints(self) -> str:
        return os.path.join(self.checkpoints, "refined")

    @property
    def backup(self) -> str:
        return os.path.join(self.path, "backup")

    @property
    def logs(self) -> str:
        return os.path.join(self.path, "logs")

    def log_dir(self, name: str) -> str:
        """A TensorBoard run under logs/ ("train", "media")."""
        return os.path.join(self.logs, name)

    @property
    def listen(self) -> str:
        return os.path.join(self.path, "listen")

    def checkpoint(self, name: str) -> str:
        """checkpoints/<name>.weights.h5 ("best", "latest", "best_clustering", a stage's name)."""
        return checkpoint_file(self.checkpoints, name)

    def stage_checkpoint(self, index: int, stage: str) -> str:
        return os.path.join(self.checkpoints, stage_checkpoint_filename(index, stage))

    def stage_checkpoints(self) -> list[tuple[int, str, str]]:
        """(stage index, stage name, path) of the run's stage checkpoints, in curriculum order."""
        found = []
        for path in glob.glob(os.path.join(self.checkpoints, "stage-*" + CHECKPOINT_SUFFIX)):
            match = STAGE_CHECKPOINT.search(os.path.basename(path))
            if match:
                found.append((int(match.group(1)), match.group(2), path))
        return sorted(found)

    def resolve_checkpoint(self, checkpoint: str | None = None) -> str:
        """A weights file of this run: `checkpoint` is a name (best, latest, stage-<i>-<name>) or a
        .weights.h5 path; default best, else latest."""
        if checkpoint and checkpoint.endswith(CHECKPOINT_SUFFIX):
            candidates = [checkpoint]
        elif checkpoint:
            candidates = [self.checkpoint(checkpoint)]
        else:
            candidates = [self.checkpoint(name) for name in ("best", "latest")]
        for path in candidates:
            if os.path.isfile(path):
                return path
        raise RunDirError(f"no checkpoint {' or '.join(candidates)}")

    def evaluation(self, split: str) -> str:
        """Where evaluate writes a split's metrics by default."""
        return os.path.join(self.path, f"eval-{split}.json")

    def table1(self, split: str) -> str:
        """Where report writes Table 1 by default."""
        return os.path.join(self.path, f"table1-{split}.md")

    def worker(self, task_type: str, task_id: int) -> "RunDir":
        """The private directory of a non-chief worker (multi-worker training)."""
        return RunDir(os.path.join(self.path, "workers", f"{task_type}-{task_id}"))

    def read_config(self) -> dict:
        """config.json, as training wrote it."""
        if not os.path.isfile(self.config):
            raise RunDirError(f"{self.config} does not exist: is {self.path!r} a training run's model_dir?")
        with open(self.config, encoding="utf-8") as f:
            return json.load(f)

    def read_metrics(self) -> dict | None:
        """metrics.json, or None before training has finished."""
        if not os.path.isfile(self.metrics):
            return None
        with open(self.metrics, encoding="utf-8") as f:
            return json.load(f)
