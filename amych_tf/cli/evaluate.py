r"""Evaluate a trained model on a split: OA, AA, L_rec, per-class accuracy, confusion matrix.

    python -m amych_tf.evaluate --model_dir=runs/sol_sup --split=test --output=runs/sol_sup/test.json
    python -m amych_tf.evaluate --model_dir=runs/sol_unsup --data_dir=data/sol --checkpoint=latest

Reads the run's config.json and a checkpoint (`--checkpoint`: best, latest,
stage-<i>-<name>, or a path to a .weights.h5 file; default: best if it exists,
else latest). The dataset defaults to the one the model was trained on; its
feature parameters must equal the model's (error otherwise). What is measured:
amych_tf.evaluation. Writes the JSON to `--output` (default
`<model_dir>/eval-<split>.json`) and the confusion matrix as a PNG beside it;
prints a summary (a second line for fidelity).
"""

from __future__ import annotations

from absl import app

from amych_tf.cli.common import FLAGS, define_evaluation_flags, fail


def define_flags() -> None:
    """Define the command-line flags (once; importing this module defines none)."""
    define_evaluation_flags()


def main(argv):
    del argv
    from amych_tf import evaluation
    from amych_tf.rundir import RunDir, RunDirError

    try:
        if not FLAGS.model_dir:
            raise evaluation.EvaluationError("--model_dir is required")
        summary, info, model = evaluation.evaluate_run(FLAGS.model_dir, FLAGS.split, data_dir=FLAGS.data_dir,
                                                checkpoint=FLAGS.checkpoint, clustering=FLAGS.clustering,
                                                batch_size=FLAGS.eval_batch_size)
    except (evaluation.EvaluationError, RunDirError) as error:
        fail(error)
    evaluation.write_report(summary, FLAGS.output or RunDir(FLAGS.model_dir).evaluation(FLAGS.split),
                            info.class_names)
    print(evaluation.summary_line(summary, model))


def console_main():
    define_flags()
    app.run(main)
