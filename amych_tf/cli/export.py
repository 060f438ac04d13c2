r"""Export a trained model as a SavedModel for TF Serving.

    python -m amych_tf.export --model_dir=runs/sol_sup --export_dir=saved_models/sol_sup

Writes `<export_dir>/<version>/` (the next integer unless --export_version);
signatures, checks and assets: amych_tf.serving.
"""

from __future__ import annotations

from absl import app, flags

from amych_tf.cli.common import FLAGS, define_evaluation_flags, fail


def define_flags() -> None:
    """Define the command-line flags (once; importing this module defines none)."""
    if "export_version" in FLAGS:
        return
    define_evaluation_flags()  # model_dir, data_dir, checkpoint, eval_batch_size
    if "export_dir" not in FLAGS:  # amych_tf.cli.train defines it too when both are imported
        flags.DEFINE_string("export_dir", None, "Directory of the exported model's versions (e.g. saved_models/NAME).")
    flags.DEFINE_integer("export_version", None, "Version to write (default: the next integer).", lower_bound=1)


def main(argv):
    del argv
    from absl import logging

    from amych_tf import evaluation, serving
    from amych_tf.rundir import RunDirError

    logging.set_verbosity(logging.WARNING)  # TensorFlow's per-function saving notes
    try:
        if not FLAGS.model_dir or not FLAGS.export_dir:
            raise serving.ExportError("--model_dir and --export_dir are required")
        path = serving.export_run(FLAGS.model_dir, FLAGS.export_dir, checkpoint=FLAGS.checkpoint,
                                  data_dir=FLAGS.data_dir, version=FLAGS.export_version,
                                  batch_size=FLAGS.eval_batch_size)
    except (serving.ExportError, evaluation.EvaluationError, RunDirError) as error:
        fail(error)
    print(f"exported {path} (signatures: {', '.join(serving.SIGNATURES)})")


def console_main():
    define_flags()
    app.run(main)
