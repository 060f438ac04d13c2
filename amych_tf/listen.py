r"""Listen to a trained model: its prototypes, and how they reconstruct your audio.

    python -m amych_tf.listen --model_dir=runs/sol_sup --out_dir=listen/ [--inputs a.wav,b.flac]
    python -m amych_tf.listen --model_dir=runs/sol_sup --html [--examples 6 --audio_dir=audio/sol]

--html writes the listening page instead (amych_tf.listen_page): index.html in
--out_dir (default <model_dir>/listen) with every file it links beside it.

Writes (WAVs at the model's sample rate, 16-bit; spectrograms rendered to sound
with the inverse front end, `amych_tf.spectral.inverse_log_mel`):
  prototypes/<k>-<name>.wav       every prototype held for --seconds
  prototype_gallery.png           every prototype as a spectrum (the paper's Figure 1)
  <input>/input.wav               the input re-synthesised from its log-Mel (what the model hears)
  <input>/winner-<k>-<name>.wav   its reconstruction by the winning prototype
  <input>/prototype-<k>-<name>.wav   by every prototype (timbre transfer, Figure 6)
  <input>/explanation.png         input | winner's reconstruction | winning prototype, and below
                                  them the winner's gain (dB), pitch shift (semitones) and
                                  filter cut-offs (Hz) and slopes (dB/octave) over time
  <input>/grid.png                input and every prototype's reconstruction, with L_rec (Figure 6):
                                  the winner framed green, the input's class red when it lost
  <input>/stages.png              input, the winner's reconstruction and the winning prototype
                                  after each curriculum stage, from the run's stage checkpoints
                                  (Figure 5)
  <input>/stage-<i>-<name>.wav    those reconstructions
  class_average_vs_prototype.png  each prototype with the mean spectrum of its class on the
                                  train split of --data_dir (default: the run's dataset, skipped
                                  with a note if it is not there), and with the prototype of the
                                  stage before the cross-entropy when the run has one (Figure 4)
Spectrograms are in dB with time in seconds and frequency in Hz, one colour
scale per figure (amych_tf.plots). An input's class is read from its path
when a directory of it is named like a class (the SOL layout's <family>/<instrument>).
APNet runs (`--model=apnet`) write their M latent prototypes decoded to
spectrograms (the APNet paper's section 5.1: each decoded with the pooling
masks of its nearest training window, from the train split of --data_dir):
  prototypes/<j>-<class>.wav      every decoded prototype, named by the class its
                                  dense-layer weights favour
  prototype_gallery.png           the decoded spectrograms
(--inputs are for our model only: APNet does not reconstruct an input from a
prototype.) The waveform VAE (`--model=vae`) writes each class's latent centre
decoded, a morph between two class centres (--morph) and the --inputs decoded from
their latent means (amych_tf.baselines.vae_run.listen). The other baselines have no
prototypes: an error says so.
Inputs are read like data_tools.prepare reads them (mono, resampled, tiled to
at least 16 frames) and padded by tiling to a multiple of 16 frames.
Unsupervised prototypes are compared with the class they are mapped to (the
training majority, as amych_tf.evaluate maps them).
"""

from __future__ import annotations

import os
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Define the command-line flags (once; importing this module defines none)."""
    if "inputs" in FLAGS:
        return
    from amych_tf import evaluate

    evaluate.define_flags()  # model_dir, checkpoint
    if "out_dir" not in FLAGS:
        flags.DEFINE_string("out_dir", None, "Directory to write WAVs and figures to.")
    flags.DEFINE_list("inputs", [], "Audio files to reconstruct with every prototype.")
    flags.DEFINE_float("seconds", 1.0, "Length of each prototype's WAV.")
    flags.DEFINE_integer("griffin_lim_iters", 64, "Griffin-Lim iterations.")
    flags.DEFINE_boolean("html", False, "Write the listening page (index.html and its files) to --out_dir "
                         "(default: <model_dir>/listen).")
    flags.DEFINE_list("morph", [], "VAE runs: the two classes whose latent centres are morphed (default: the first two).")
    flags.DEFINE_integer("examples", 6, "Test clips on the listening page (the wrong ones first, up to half).")
    flags.DEFINE_string("audio_dir", None, "The dataset's audio directory (its manifest's paths are relative to "
                        "it): the listening page then also plays each example's original recording.")


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def to_audio(log_mel, config, n_iter: int = 64):
    """Waveforms of log-Mels [..., frames, mels] (inverse front end), each scaled to a peak of 0.9."""
    import numpy as np

    from amych_tf import spectral

    audio = spectral.inverse_log_mel(np.asarray(log_mel), config, n_iter=n_iter)
    peak = np.maximum(np.abs(audio).max(axis=-1, keepdims=True), 1e-6)
    return (0.9 * audio / peak).astype(np.float32)


def held_prototypes(prototypes, config, seconds: float = 1.0):
    """Each prototype [K, mels] repeated over the frames of `seconds`: [K, frames, mels]."""
    import numpy as np

    frames = max(1, config.num_frames(int(seconds * config.sample_rate)))
    return np.repeat(np.asarray(prototypes)[:, None, :], frames, axis=1)


def write_wav(path: str, audio, sample_rate: int) -> None:
    import soundfile

    soundfile.write(path, audio, sample_rate, subtype="PCM_16")


def prototype_names(model) -> list[str]:
    if model.mode == "supervised" and model.class_names:
        return list(model.class_names)
    return [f"cluster{k}" for k in range(model.num_prototypes)]


def listen_to_prototypes(model, out_dir: str, seconds: float = 1.0, n_iter: int = 64) -> list[str]:
    import numpy as np

    from amych_tf import plots

    config, names = model.feature_config, prototype_names(model)
    prototypes = np.array(model.prototypes.numpy())
    os.makedirs(os.path.join(out_dir, "prototypes"), exist_ok=True)
    paths = []
    for k, audio in enumerate(to_audio(held_prototypes(prototypes, config, seconds), config, n_iter)):
        path = os.path.join(out_dir, "prototypes", f"{k}-{safe_name(names[k])}.wav")
        write_wav(path, audio, config.sample_rate)
        paths.append(path)
    with open(os.path.join(out_dir, "prototype_gallery.png"), "wb") as f:
        f.write(plots.figure_to_png(plots.prototype_gallery(prototypes, config, names)))
    return paths


def listen_to_apnet_prototypes(model, data_dir: str, out_dir: str, batch_size: int = 32, n_iter: int = 64) -> list[str]:
    """APNet's latent prototypes decoded (nearest train-split window's masks) as WAVs and a gallery."""
    from amych_tf import data, plots

    info = data.load_dataset_info(data_dir, expected_features=model.feature_config)
    spectrograms = model.decode_prototypes(
        data.evaluation_dataset(data_dir, "train", batch_size=batch_size, info=info), batch_size=batch_size)
    class_names = model.class_names or [str(k) for k in range(model.num_classes)]
    names = [f"{j}-{class_names[k]}" for j, k in enumerate(model.prototype_classes())]
    os.makedirs(os.path.join(out_dir, "prototypes"), exist_ok=True)
    paths = []
    for name, audio in zip(names, to_audio(spectrograms, model.feature_config, n_iter)):
        paths.append(os.path.join(out_dir, "prototypes", f"{safe_name(name)}.wav"))
        write_wav(paths[-1], audio, model.feature_config.sample_rate)
    with open(os.path.join(out_dir, "prototype_gallery.png"), "wb") as f:
        f.write(plots.figure_to_png(plots.spectrogram_gallery(spectrograms, model.feature_config, names)))
    return paths


def class_means(model, data_dir: str, split: str = "train", batch_size: int = 32):
    """Mean log-Mel spectrum [C, F] of each class's clips (each clip averaged over its real frames).

    Classes without clips are NaN. Returns (means, DatasetInfo).
    """
    import numpy as np

    from amych_tf import data

    info = data.load_dataset_info(data_dir, expected_features=model.feature_config)
    sums = np.zeros((info.num_classes, model.feature_config.n_mels))
    counts = np.zeros(info.num_classes)
    for features, labels in data.evaluation_dataset(data_dir, split, batch_size=batch_size, info=info):
        mask = features["mask"].numpy()[..., None]
        clip_means = (features["log_mel"].numpy() * mask).sum(1) / mask.sum(1)
        np.add.at(sums, labels.numpy(), clip_means)
        counts += np.bincount(labels.numpy(), minlength=info.num_classes)
    with np.errstate(invalid="ignore"):
        return sums / counts[:, None], info


def prototypes_without_cross_entropy(model_dir: str):
    """Prototypes [K, F] of the last stage checkpoint before the cross-entropy stage; None when the
    run has no such stage (unsupervised, or no stage checkpoints)."""
    from amych_tf import evaluate, report

    checkpoints = report.stage_checkpoints(model_dir)
    stages = [stage for _, stage, _ in checkpoints]
    if "ce" not in stages or stages.index("ce") == 0:
        return None
    model, _ = evaluate.load_model(model_dir, checkpoints[stages.index("ce") - 1][2])
    return model.prototypes.numpy()


def listen_to_class_averages(model, data_dir: str, out_dir: str, batch_size: int = 32,
                             model_dir: str | None = None) -> str:
    """Figure 4: every prototype with the average spectrum of its class; returns the PNG's path.

    With the run's `model_dir`, the prototypes of the stage before the
    cross-entropy joins them too, as the paper compares prototypes learned
    without and with it.
    """
    import numpy as np

    from amych_tf import evaluate, plots

    means, info = class_means(model, data_dir, batch_size=batch_size)
    classes = evaluate.prototype_classes(model, data_dir, batch_size)
    per_prototype = np.stack([means[c] if c >= 0 else np.full(means.shape[1], np.nan) for c in classes])
    names = [info.class_names[c] if c >= 0 else "no class" for c in classes]
    if model.mode == "unsupervised":
        names = [f"cluster{k}: {name}" for k, name in enumerate(names)]
    path = os.path.join(out_dir, "class_average_vs_prototype.png")
    os.makedirs(out_dir, exist_ok=True)
    figure = plots.class_average_vs_prototype(
        per_prototype, model.prototypes.numpy(), names, model.feature_config,
        without_cross_entropy=prototypes_without_cross_entropy(model_dir) if model_dir else None)
    with open(path, "wb") as f:
        f.write(plots.figure_to_png(figure))
    return path


def listen_across_stages(model_dir: str, path: str, out_dir: str, n_iter: int = 64) -> str | None:
    """Figure 5 for one input from the run's stage checkpoints; returns the PNG's path (None: no stages)."""
    from amych_tf import evaluate, report

    checkpoints = report.stage_checkpoints(model_dir)
    if not checkpoints:
        return None
    model, _ = evaluate.load_model(model_dir, checkpoints[0][2])
    log_mel, frames = input_log_mel(path, model.feature_config, 2**model.n_pools)
    return stages_of_log_mel(model, checkpoints, log_mel, frames, input_directory(out_dir, path),
                             input_title(path, model.class_names), n_iter)


def stages_of_log_mel(model, checkpoints, log_mel, frames: int, directory: str, title: str,
                      n_iter: int = 64) -> str:
    """Figure 5 for one log-Mel [T, F] (`frames` real): `model` loads each stage checkpoint
    (report.stage_checkpoints) in turn; writes stages.png and stage-<i>-<name>.wav to `directory`
    and returns the PNG's path."""
    import numpy as np
    import tensorflow as tf

    from amych_tf import plots, report

    config, names = model.feature_config, prototype_names(model)
    features = {"log_mel": tf.constant(log_mel[None]),
                "mask": tf.constant((np.arange(log_mel.shape[0]) < frames).astype(np.float32)[None])}
    os.makedirs(directory, exist_ok=True)
    rows = []
    for index, stage, checkpoint in checkpoints:
        model.load_weights(checkpoint)
        outputs = model(features, training=False, return_details=True)
        rec_errors = outputs["rec_errors"].numpy()[0]
        winner = int(rec_errors.argmin())
        reconstruction = outputs["reconstructions"].numpy()[0, :frames, winner]
        rows.append((report.ROW_NAMES.get(stage, stage), reconstruction, model.prototypes.numpy()[winner],
                     names[winner], float(rec_errors[winner])))
        write_wav(os.path.join(directory, f"stage-{index}-{stage}.wav"), to_audio(reconstruction, config, n_iter),
                  config.sample_rate)
    figure_path = os.path.join(directory, "stages.png")
    with open(figure_path, "wb") as f:
        f.write(plots.figure_to_png(plots.stage_reconstructions(log_mel[:frames], rows, config, title)))
    return figure_path


def class_from_path(path: str, class_names) -> str | None:
    """The class whose name's parts are consecutive directories of `path` (SOL: <family>/<instrument>/...)."""
    directories = os.path.normpath(os.path.dirname(os.path.abspath(path))).split(os.sep)
    for name in class_names or ():
        parts = name.split("/")
        if any(directories[i:i + len(parts)] == parts for i in range(len(directories))):
            return name
    return None


def input_title(path: str, class_names) -> str:
    """The file's name, with its class when its path names one."""
    name = class_from_path(path, class_names)
    return os.path.basename(path) + (f" (class {name})" if name else "")


def input_directory(out_dir: str, path: str) -> str:
    directory = os.path.join(out_dir, safe_name(os.path.splitext(os.path.basename(path))[0]))
    os.makedirs(directory, exist_ok=True)
    return directory


def input_log_mel(path: str, config, multiple_of: int = 16):
    """(log-Mel padded by tiling to a multiple of `multiple_of` frames, number of real frames)."""
    import numpy as np

    from amych_tf import data, spectral
    from data_tools import audio

    clip = audio.load_clip(path, config.sample_rate, config.num_samples(data.MIN_FRAMES))
    log_mel = spectral.log_mel(clip.waveform[None], config)[0].numpy()
    frames = log_mel.shape[0]
    padded = -(-frames // multiple_of) * multiple_of
    return np.resize(log_mel, (padded, log_mel.shape[1])) if padded != frames else log_mel, frames


def listen_to_input(model, path: str, out_dir: str, n_iter: int = 64) -> dict:
    """WAVs and figures of one audio file; returns {"winner", "rec_errors", "directory"}."""
    log_mel, frames = input_log_mel(path, model.feature_config, 2**model.n_pools)
    return listen_to_log_mel(model, log_mel, frames, input_directory(out_dir, path),
                             input_title(path, model.class_names), class_from_path(path, model.class_names), n_iter)


def listen_to_log_mel(model, log_mel, frames: int, directory: str, title: str, true_class: str | None = None,
                      n_iter: int = 64) -> dict:
    """WAVs and figures of one log-Mel [T, F] (T a multiple of 2 ** n_pools, `frames` of them real)
    written to `directory`; `true_class` (a prototype's name) is framed red in grid.png when it loses.

    Returns {"winner", "rec_errors", "directory"}.
    """
    import numpy as np
    import tensorflow as tf

    from amych_tf import plots

    config, names = model.feature_config, prototype_names(model)
    mask = (np.arange(log_mel.shape[0]) < frames).astype(np.float32)
    outputs = model({"log_mel": tf.constant(log_mel[None]), "mask": tf.constant(mask[None])},
                    training=False, return_details=True)
    rec_errors = outputs["rec_errors"].numpy()[0]
    winner = int(rec_errors.argmin())
    reconstructions = outputs["reconstructions"].numpy()[0, :frames].transpose(1, 0, 2)  # [K, T, F]
    os.makedirs(directory, exist_ok=True)
    write_wav(os.path.join(directory, "input.wav"), to_audio(log_mel[:frames], config, n_iter), config.sample_rate)
    audio = to_audio(reconstructions, config, n_iter)
    write_wav(os.path.join(directory, f"winner-{winner}-{safe_name(names[winner])}.wav"), audio[winner],
              config.sample_rate)
    for k in range(len(reconstructions)):
        write_wav(os.path.join(directory, f"prototype-{k}-{safe_name(names[k])}.wav"), audio[k], config.sample_rate)
    parameters = {name: outputs[name].numpy()[0, :frames, winner] for name in plots.PARAMETER_NAMES}
    figures = {
        "explanation.png": plots.winner_explanation(
            log_mel[:frames], reconstructions[winner], model.prototypes.numpy()[winner], parameters, config,
            f"{title}: won by {names[winner]}, L_rec {rec_errors[winner]:.4f}"),
        "grid.png": plots.reconstruction_grid(log_mel[:frames], reconstructions, rec_errors, names, winner, config,
                                              title, names.index(true_class) if true_class in names else None),
    }
    for name, figure in figures.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(plots.figure_to_png(figure))
    return {"winner": winner, "rec_errors": rec_errors, "directory": directory}


def main(argv):
    del argv
    from amych_tf import evaluate
    from data_tools import audio

    try:
        if FLAGS.html and FLAGS.model_dir and not FLAGS.out_dir:
            FLAGS.out_dir = os.path.join(FLAGS.model_dir, "listen")
        if not FLAGS.model_dir or not FLAGS.out_dir:
            raise evaluate.EvaluationError("--model_dir and --out_dir are required")
        model, config = evaluate.load_model(FLAGS.model_dir, FLAGS.checkpoint)
        data_dir = FLAGS.data_dir or config["dataset"]["data_dir"]
        if evaluate.is_vae(model):  # its sounds come out of its decoder (amych_tf.baselines.vae_run)
            from amych_tf.baselines import vae_run

            if FLAGS.html or len(FLAGS.morph) not in (0, 2):
                raise evaluate.EvaluationError("VAE runs: no --html page; --morph takes two class names")
            try:
                written = vae_run.listen(model, data_dir, FLAGS.out_dir, FLAGS.inputs,
                                         tuple(FLAGS.morph) or None, FLAGS.eval_batch_size)
            except (FileNotFoundError, ValueError) as error:
                raise evaluate.EvaluationError(str(error)) from None
            print(f"class centres, morph and {len(written['inputs'])} input(s) -> {FLAGS.out_dir}")
            return
        if FLAGS.html:
            from amych_tf import listen_page

            if not os.path.isfile(os.path.join(data_dir, "dataset_info.json")):
                raise evaluate.EvaluationError(f"no dataset at {data_dir!r}: the listening page shows its test "
                                               "split (give --data_dir)")
            page = listen_page.write_page(model, config, FLAGS.model_dir, data_dir, FLAGS.out_dir, FLAGS.examples,
                                          FLAGS.audio_dir, FLAGS.eval_batch_size, FLAGS.griffin_lim_iters)
            print(f"listening page -> {page}")
            return
        if hasattr(model, "decode_prototypes"):
            if FLAGS.inputs:
                raise evaluate.EvaluationError("--inputs: APNet does not reconstruct inputs from its prototypes")
            if not os.path.isfile(os.path.join(data_dir, "dataset_info.json")):
                raise evaluate.EvaluationError(f"no dataset at {data_dir!r}: APNet decodes its prototypes with the "
                                               "masks of training windows (give --data_dir)")
            listen_to_apnet_prototypes(model, data_dir, FLAGS.out_dir, FLAGS.eval_batch_size, FLAGS.griffin_lim_iters)
            print(f"prototypes -> {os.path.join(FLAGS.out_dir, 'prototypes')}")
            return
        if not evaluate.is_playable(model):
            raise evaluate.EvaluationError(f"{type(model).__name__} has no prototypes to listen to")
        listen_to_prototypes(model, FLAGS.out_dir, FLAGS.seconds, FLAGS.griffin_lim_iters)
        if os.path.isfile(os.path.join(data_dir, "dataset_info.json")):
            path = listen_to_class_averages(model, data_dir, FLAGS.out_dir, FLAGS.eval_batch_size, FLAGS.model_dir)
            print(f"class averages -> {path}")
        else:
            print(f"note: no dataset at {data_dir!r}: class_average_vs_prototype.png skipped (give --data_dir)")
        names = prototype_names(model)
        for path in FLAGS.inputs:
            result = listen_to_input(model, path, FLAGS.out_dir, FLAGS.griffin_lim_iters)
            listen_across_stages(FLAGS.model_dir, path, FLAGS.out_dir, FLAGS.griffin_lim_iters)
            print(f"{path}: prototype {names[result['winner']]} (L_rec {result['rec_errors'].min():.4f}) "
                  f"-> {result['directory']}")
    except (evaluate.EvaluationError, audio.UnusableAudio) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"prototypes -> {os.path.join(FLAGS.out_dir, 'prototypes')}")


def console_main():
    define_flags()
    app.run(main)


if __name__ == "__main__":
    console_main()
