r"""Listen to a trained model: its prototypes, and how they reconstruct your audio.

    python -m amych_tf.listen --model_dir=runs/sol_sup --out_dir=listen/ [--inputs a.wav,b.flac]
    python -m amych_tf.listen --model_dir=runs/sol_sup --html [--examples 6 --audio_dir=audio/sol]

What is written: amych_tf.listening. --html writes the listening page instead
(amych_tf.listen_page): index.html in --out_dir (default <model_dir>/listen)
with every file it links beside it.
"""

from __future__ import annotations

import os

from absl import app, flags

from amych_tf.cli.common import FLAGS, define_evaluation_flags, fail


def define_flags() -> None:
    """Define the command-line flags (once; importing this module defines none)."""
    if "inputs" in FLAGS:
        return
    define_evaluation_flags()  # model_dir, checkpoint
    if "out_dir" not in FLAGS:
        flags.DEFINE_string("out_dir", None, "Directory to write WAVs and figures to.")
    flags.DEFINE_list("inputs", [], "Audio files to reconstruct with every prototype.")
    flags.DEFINE_float("seconds", 1.0, "Length of each prototype's WAV.")
    flags.DEFINE_integer("griffin_lim_iters", 64, "Griffin-Lim iterations.")
    flags.DEFINE_boolean("html", False, "Write the listening page (index.html and its files) to --out_dir "
                         "(default: <model_dir>/listen).")
    flags.DEFINE_list("morph", [], "VAE runs: the two classes whose latent centres are morphed (default: the first "
                      "two).")
    flags.DEFINE_integer("examples", 6, "Test clips on the listening page (the wrong ones first, up to half).")
    flags.DEFINE_string("audio_dir", None, "The dataset's audio directory (its manifest's paths are relative to "
                        "it): the listening page then also plays each example's original recording.")


def main(argv):
    del argv
    from amych_tf import evaluation, listening, registry
    from amych_tf.rundir import RunDir, RunDirError
    from data_tools import audio

    try:
        out_dir = FLAGS.out_dir
        if FLAGS.html and FLAGS.model_dir and not out_dir:
            out_dir = RunDir(FLAGS.model_dir).listen
        if not FLAGS.model_dir or not out_dir:
            raise evaluation.EvaluationError("--model_dir and --out_dir are required")
        model, config = registry.load_model(FLAGS.model_dir, FLAGS.checkpoint)
        data_dir = FLAGS.data_dir or evaluation.default_data_dir(config)
        if FLAGS.html and model.reads_waveforms:
            raise evaluation.EvaluationError("VAE runs: no --html page")
        if len(FLAGS.morph) not in (0, 2):
            raise evaluation.EvaluationError("--morph takes two class names")
        if FLAGS.html:
            from amych_tf import listen_page

            if not os.path.isfile(os.path.join(data_dir, "dataset_info.json")):
                raise evaluation.EvaluationError(f"no dataset at {data_dir!r}: the listening page shows its test "
                                                 "split (give --data_dir)")
            page = listen_page.write_page(model, config, FLAGS.model_dir, data_dir, out_dir, FLAGS.examples,
                                          FLAGS.audio_dir, FLAGS.eval_batch_size, FLAGS.griffin_lim_iters)
            print(f"listening page -> {page}")
            return
        for line in listening.listen_to_run(model, FLAGS.model_dir, out_dir, data_dir, FLAGS.inputs, FLAGS.seconds,
                                            FLAGS.griffin_lim_iters, FLAGS.eval_batch_size, tuple(FLAGS.morph) or None):
            print(line)
    except (evaluation.EvaluationError, RunDirError, audio.UnusableAudio) as error:
        fail(error)


def console_main():
    define_flags()
    app.run(main)
