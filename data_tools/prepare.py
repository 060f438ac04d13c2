r"""Convert an audio collection into a prepared amych_tf dataset.

    python -m data_tools.prepare --layout=sol --audio_dir=SOL --out_dir=data/sol
    python -m data_tools.prepare --layout=librispeech \
        --audio_dir=LibriSpeech/train-clean-360 --out_dir=data/librispeech --num_classes=128
    python -m data_tools.prepare --layout=folders --audio_dir=my_sounds --out_dir=data/mine

    # The same conversion as an Apache Beam pipeline (the `beam` extra), on any runner:
    python -m data_tools.prepare --layout=sol --audio_dir=SOL --out_dir=data/sol --runner=DirectRunner
    python -m data_tools.prepare ... --runner=DataflowRunner --project=P --region=R \
        --temp_location=gs://B/tmp --sdk_container_image=IMAGE

Features default to the layout's preset (sol -> sol, librispeech -> librispeech,
folders -> sol); --preset and the feature flags override it. See
data_tools.conversion for what is written and the decisions behind it, and
data_tools.beam_prepare for the Beam pipeline. With --runner, the flags this
module does not define are Beam pipeline options, and --num_workers is passed
to the runner (Dataflow's worker count); without it they are errors.
Errors print one line, `error: ...`, and exit with status 1.
"""

import os
import sys

from absl import app, flags

from data_tools import layouts

# This module imports data_tools.conversion (and with it TensorFlow) only inside
# `main`: spawned decoding workers re-import the main module as __mp_main__ and
# must not load TensorFlow.

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Define the command-line flags (once; importing this module defines none)."""
    if "audio_dir" in FLAGS:
        return
    flags.DEFINE_enum("layout", None, layouts.LAYOUTS, "Directory layout of --audio_dir (required).")
    flags.DEFINE_string("audio_dir", None, "Directory of the source audio (required).")
    flags.DEFINE_string(
        "out_dir", None, "Directory of the prepared dataset (required; created, earlier outputs replaced)."
    )
    flags.DEFINE_string("preset", None, "Feature preset, 'sol' or 'librispeech' (default: the layout's).")
    flags.DEFINE_integer("sample_rate", None, "Override the preset's sample rate (Hz).")
    flags.DEFINE_integer("n_fft", None, "Override the preset's FFT / window length (samples).")
    flags.DEFINE_integer("hop_length", None, "Override the preset's hop (samples).")
    flags.DEFINE_integer("n_mels", None, "Override the preset's number of mel bands.")
    flags.DEFINE_float("fmin", None, "Override the lowest mel frequency (Hz; preset: 0).")
    flags.DEFINE_float("fmax", None, "Override the highest mel frequency (Hz; preset: Nyquist).")
    flags.DEFINE_integer(
        "num_classes", None, "LibriSpeech: keep the N speakers with the most audio, labelled by that rank (default 128)."
    )
    flags.DEFINE_enum(
        "sol_classes",
        "paper",
        layouts.SOL_CLASS_CHOICES,
        "SOL: 'paper' = the paper's 33 classes in its label order; 'discovered' = every Family/Instrument found, sorted.",
    )
    if "seed" not in FLAGS:  # amych_tf.train defines it too when both are imported (tests)
        flags.DEFINE_integer("seed", 0, "Seed of the 70/10/20 train/validation/test split.")
    flags.DEFINE_integer("num_workers", os.cpu_count() or 1, "Decoding processes (1: decode in the main process).")
    flags.DEFINE_integer("shard_size", 1000, "Examples per TFRecord shard.")
    flags.DEFINE_enum("storage_dtype", "float32", ["float32", "float16"], "Precision of the stored log-Mel.")
    flags.DEFINE_bool("progress", True, "Show a progress line on stderr (local path only).")
    flags.DEFINE_bool("waveform", False, "Also store each clip's waveform, resampled to --waveform_sample_rate and "
                      "cut or zero-padded to --waveform_samples (the waveform VAE's input, --model=vae).")
    flags.DEFINE_integer("waveform_sample_rate", 8000, "Sample rate of the stored waveform (the VAE thesis: 8 kHz).")
    flags.DEFINE_integer("waveform_samples", 4096, "Length of the stored waveform (the VAE thesis: 4096).")
    flags.DEFINE_string(
        "runner",
        None,
        "Run the conversion as an Apache Beam pipeline on this runner (DirectRunner, DataflowRunner, FlinkRunner, "
        "SparkRunner, ...; needs the beam extra); flags not defined here are passed to Beam. Default: the local path.",
    )


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, except that flags this module does not define are handed to `main`
    (as Beam pipeline options with --runner, an error without it)."""
    try:
        return FLAGS(argv, known_only=True)
    except flags.Error as error:
        sys.stderr.write(f"FATAL Flags parsing error: {error}\n")
        sys.stderr.write("Pass --helpshort or --helpfull to see help on flags.\n")
        sys.exit(1)


def main(argv) -> int:
    if len(argv) > 1 and not FLAGS.runner:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from data_tools import conversion

    if FLAGS.runner:
        try:
            from data_tools import beam_prepare
        except ImportError as error:
            print(f"error: --runner needs Apache Beam ({error}): pip install -e '.[beam]'", file=sys.stderr)
            return 1
    try:
        features = conversion.resolve_features(
            FLAGS.layout,
            FLAGS.preset,
            sample_rate=FLAGS.sample_rate,
            n_fft=FLAGS.n_fft,
            hop_length=FLAGS.hop_length,
            n_mels=FLAGS.n_mels,
            fmin=FLAGS.fmin,
            fmax=FLAGS.fmax,
        )
        common = dict(
            layout=FLAGS.layout,
            features=features,
            num_classes=FLAGS.num_classes,
            sol_classes=FLAGS.sol_classes,
            seed=FLAGS.seed,
            shard_size=FLAGS.shard_size,
            storage_dtype=FLAGS.storage_dtype,
            waveform={"sample_rate": FLAGS.waveform_sample_rate, "num_samples": FLAGS.waveform_samples}
            if FLAGS.waveform else None,
        )
        if FLAGS.runner:
            pipeline_args = [f"--runner={FLAGS.runner}", *argv[1:]]
            if FLAGS["num_workers"].present:  # Beam's own --num_workers (e.g. Dataflow's worker count)
                pipeline_args.append(f"--num_workers={FLAGS.num_workers}")
            summary = beam_prepare.prepare_dataset_with_beam(
                FLAGS.audio_dir, FLAGS.out_dir, pipeline_args=pipeline_args, **common
            )
        else:
            summary = conversion.prepare_dataset(
                FLAGS.audio_dir, FLAGS.out_dir, num_workers=FLAGS.num_workers, show_progress=FLAGS.progress, **common
            )
    except conversion.PrepareError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(summary)
    return 0


def run() -> None:
    """Console-script entry point (`amych-prepare`)."""
    define_flags()
    flags.mark_flags_as_required(["layout", "audio_dir", "out_dir"])
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
