"""Training examples per second and peak memory of PlayablePrototypes.fit.

    python benchmarks/train_throughput.py [--num_prototypes=33] [--frames=256] [--batch_size=32]
        [--steps=12] [--warmup_steps=3] [--jit_compile] [--append_results]

The paper's setting: K=33, 128 mels ('sol' features), 256-frame crops, batch 32,
every transformation on, grouped AdamW at full learning rate for every group.
Random log-Mels from memory (the input pipeline is measured apart, see
pipeline_throughput.py). Times `--steps` steps of `fit` after `--warmup_steps`
(tracing, compilation); it also prints the process's CPU seconds per step,
which other jobs on the same cores change little. Peak memory is the process's peak resident set size
(ru_maxrss), so it includes TensorFlow itself (0.60-0.68 GB after its import, measured). glibc's malloc
is set as the command-line tools set it (`amych_tf.memory.limit_heap_growth`).
"""

from __future__ import annotations

import datetime
import os
import platform
import resource
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from amych_tf.memory import limit_heap_growth  # noqa: E402

limit_heap_growth()  # as the command-line tools do, before TensorFlow starts its threads

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from amych_tf import model as model_lib  # noqa: E402
from amych_tf.optimizers import GroupedAdamW  # noqa: E402
from amych_tf.spectral import FeatureConfig  # noqa: E402

RESULTS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS-train.md")
RESULTS_HEADER = (
    "# Training throughput (benchmarks/train_throughput.py)\n\n"
    "| date | K | mels | frames | batch | whole-step XLA | examples/s | s/step | first step (s) | peak RSS (GB) "
    "| machine | TensorFlow |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_prototypes", 33, "K.")
flags.DEFINE_integer("frames", 256, "Frames per training crop.")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_integer("steps", 12, "Timed steps.", lower_bound=1)
flags.DEFINE_integer("warmup_steps", 3, "Steps before timing (the first traces and compiles).", lower_bound=1)
flags.DEFINE_boolean("jit_compile", False, "Compile the whole train step with XLA (amych_tf.train: off by default).")
flags.DEFINE_boolean("append_results", False, f"Append a row to {RESULTS_PATH}.")
flags.DEFINE_string("profile_dir", None,
                    "Trace the timed steps with tf.profiler into this directory (TensorBoard's profile tab, or "
                    "benchmarks/op_profile.py for a table of op self-times). Tracing slows the steps: time without it.")


class StepTimer(keras.callbacks.Callback):
    """Wall and CPU time at the end of each step; traces the steps after `profile_after` into `profile_dir`."""

    def __init__(self, profile_dir=None, profile_after=0):
        super().__init__()
        self.times, self.cpu_times = [], []
        self.profile_dir, self.profile_after = profile_dir, profile_after

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter())
        self.cpu_times.append(time.process_time())
        if self.profile_dir and batch + 1 == self.profile_after:
            tf.profiler.experimental.start(self.profile_dir)

    def on_train_end(self, logs=None):
        if self.profile_dir:
            tf.profiler.experimental.stop()


def main(argv):
    del argv
    keras.utils.set_random_seed(0)
    features = FeatureConfig.preset("sol")
    model = model_lib.PlayablePrototypes(features, FLAGS.num_prototypes, mode="supervised")
    model.build_for_frames(FLAGS.frames)
    model.compile(optimizer=GroupedAdamW(model_lib.optimizer_groups(), learning_rate=1e-4),
                  jit_compile=FLAGS.jit_compile)
    model.optimizer.build(model.trainable_variables)
    model.set_active_transformations(("gain", "pitch", "low", "high"))
    for group in model.optimizer.group_names:
        model.optimizer.set_group_scale(group, 1.0)

    rng = np.random.default_rng(0)
    total = FLAGS.steps + FLAGS.warmup_steps
    log_mel = rng.normal(0.5, 0.1, (FLAGS.batch_size, FLAGS.frames, features.n_mels)).astype(np.float32)
    labels = rng.integers(0, FLAGS.num_prototypes, FLAGS.batch_size).astype(np.int32)
    dataset = tf.data.Dataset.from_tensors(({"log_mel": log_mel}, labels)).repeat(total)

    timer = StepTimer(FLAGS.profile_dir, FLAGS.warmup_steps)
    start = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=total, callbacks=[timer], verbose=0)
    first_step = timer.times[0] - start
    seconds_per_step = (timer.times[-1] - timer.times[FLAGS.warmup_steps - 1]) / FLAGS.steps
    examples_per_second = FLAGS.batch_size / seconds_per_step
    # CPU seconds of this process per step: what a step costs when other jobs share the cores.
    cpu_per_step = (timer.cpu_times[-1] - timer.cpu_times[FLAGS.warmup_steps - 1]) / FLAGS.steps
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    machine = f"{os.cpu_count()} CPU, {platform.machine()}"
    print(f"train throughput: {examples_per_second:.1f} examples/s ({seconds_per_step:.3f} s/step, "
          f"{cpu_per_step:.3f} CPU-s/step; first step "
          f"{first_step:.1f} s; peak RSS {peak_gb:.2f} GB; K={FLAGS.num_prototypes}, {features.n_mels} mels, "
          f"{FLAGS.frames} frames, batch {FLAGS.batch_size}, whole-step XLA {FLAGS.jit_compile}; {machine})")
    if FLAGS.append_results:
        if not os.path.exists(RESULTS_PATH):
            with open(RESULTS_PATH, "w", encoding="utf-8") as f:
                f.write(RESULTS_HEADER)
        with open(RESULTS_PATH, "a", encoding="utf-8") as f:
            f.write(f"| {datetime.date.today()} | {FLAGS.num_prototypes} | {features.n_mels} | {FLAGS.frames} "
                    f"| {FLAGS.batch_size} | {FLAGS.jit_compile} | {examples_per_second:.1f} | {seconds_per_step:.3f} "
                    f"| {first_step:.1f} | {peak_gb:.2f} | {machine} | {tf.__version__} |\n")


if __name__ == "__main__":
    app.run(main)
