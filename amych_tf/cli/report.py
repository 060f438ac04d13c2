r"""The paper's Table 1 for one run: metrics at the end of every curriculum stage.

    python -m amych_tf.report --model_dir=runs/sol_sup [--split=validation] [--output=FILE.md]

Writes a Markdown table (`--output`, default `<model_dir>/table1-<split>.md`)
and the same rows as JSON beside it; prints the table. The rows:
amych_tf.reporting.
"""

from __future__ import annotations

from absl import app

from amych_tf.cli.common import FLAGS, define_evaluation_flags, fail


def define_flags() -> None:
    """Define the command-line flags (once; importing this module defines none)."""
    define_evaluation_flags()  # model_dir, data_dir, eval_batch_size, split, checkpoint, output
    FLAGS.set_default("split", "validation")


def main(argv):
    del argv
    from amych_tf import evaluation, reporting
    from amych_tf.rundir import RunDirError

    try:
        if not FLAGS.model_dir:
            raise evaluation.EvaluationError("--model_dir is required")
        table, _ = reporting.write_table1(FLAGS.model_dir, FLAGS.output, FLAGS.data_dir, FLAGS.split,
                                          FLAGS.eval_batch_size)
    except (evaluation.EvaluationError, RunDirError, FileNotFoundError, ValueError) as error:
        fail(error)
    print(table, end="")


def console_main():
    define_flags()
    app.run(main)
