r"""The paper's three tables on one prepared dataset: our model against its baselines.

    python -m amych_tf.compare --data_dir=data/sol --out_dir=runs/compare_sol --configs=sol
    python -m amych_tf.compare --data_dir=demo/prepared --out_dir=demo/compare --configs=demo

Runs, budgets and tables: amych_tf.comparison.
"""

from __future__ import annotations

import os

from absl import app, flags

from amych_tf.cli.common import FLAGS, fail


def define_flags() -> None:
    """Define the command-line flags (once; importing this module defines none)."""
    from amych_tf.comparison import PAPER

    if "configs" in FLAGS:
        return
    if "data_dir" not in FLAGS:
        flags.DEFINE_string("data_dir", None, "Prepared dataset (data_tools.prepare).")
    flags.DEFINE_string("out_dir", None, "Where the runs and the tables go.")
    flags.DEFINE_string("configs", None, "Config prefix: <configs_dir>/<configs>_<run>.cfg (demo, sol, libri).")
    flags.DEFINE_string("configs_dir", os.path.join(os.getcwd(), "configs"), "Directory of the configs.")
    flags.DEFINE_list("runs", None, "Runs to train or collect (default: every run, vae only when the data holds "
                      "waveforms, i.e. was prepared with --waveform).")
    flags.DEFINE_list("train_flags", [], "Flags appended to every training run, e.g. --epochs=3.")
    flags.DEFINE_enum("paper", None, list(PAPER), "Add the paper's numbers for this dataset.")
    flags.DEFINE_boolean("match_cpu_budget", True, "Give each baseline --cpu_budget = the CPU time of our run(s) "
                         "in its table (direct: sup; autoencoder: unsup; apnet, vae: the larger).")


def main(argv):
    del argv
    from amych_tf import comparison

    try:
        if not FLAGS.data_dir or not FLAGS.out_dir or not FLAGS.configs:
            raise comparison.CompareError("--data_dir, --out_dir and --configs are required")
        tables = comparison.compare(FLAGS.data_dir, FLAGS.out_dir, FLAGS.configs, FLAGS.configs_dir, FLAGS.runs,
                                    FLAGS.train_flags, FLAGS.match_cpu_budget, FLAGS.paper)
    except comparison.CompareError as error:
        fail(error)
    for text in tables.values():
        print(text)



def console_main():
    define_flags()
    app.run(main)
