"""Flags several commands share, and the one-line error exit."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before anything imports TensorFlow

from absl import flags  # noqa: E402

from amych_tf.memory import limit_heap_growth  # noqa: E402

limit_heap_growth()  # also before TensorFlow starts its threads (amych_tf.memory)

FLAGS = flags.FLAGS


def define_run_flags() -> None:
    """--model_dir, --data_dir and --eval_batch_size, defined by the first command that asks (the tests
    import several commands into one process)."""
    if "model_dir" not in FLAGS:
        flags.DEFINE_string("model_dir", None, "Directory of a training run (amych_tf.train).")
    if "data_dir" not in FLAGS:
        flags.DEFINE_string("data_dir", None, "Prepared dataset (default: the one in the model's config.json).")
    if "eval_batch_size" not in FLAGS:
        # 32 rather than 128: 128 is 5-8% faster on ~100-frame clips but doubled the peak memory on
        # clips of ~1100 frames (2.17 against 1.17 GB) for no speed (benchmarks/RESULTS-eval.md, session 11).
        flags.DEFINE_integer("eval_batch_size", 32, "Clips per evaluation batch (results do not depend on it; "
                             "larger batches are a little faster on short clips and need more memory on long ones).")


def define_evaluation_flags() -> None:
    """The run flags plus --split, --checkpoint, --output and --clustering (evaluate, report, listen, export)."""
    if "output" in FLAGS:
        return
    define_run_flags()
    flags.DEFINE_enum("split", "test", ["train", "validation", "test"], "Split to evaluate.")
    flags.DEFINE_string("checkpoint", None, "best, latest, stage-<i>-<name>, or a .weights.h5 path "
                        "(default: best, else latest).")
    flags.DEFINE_string("output", None, "JSON file to write (default: <model_dir>/eval-<split>.json).")
    flags.DEFINE_boolean("clustering", False, "Evaluate a baseline's K-means clusters (majority-mapped) instead of "
                         "its classifier (apnet: APNet + K-means).")


def fail(message, status: int = 2) -> None:
    """Exit with one `error:` line on stderr."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)
