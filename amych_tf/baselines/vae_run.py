"""Training, evaluation and listening of the waveform VAE (amych_tf.baselines.vae).

The pipeline module of a `reads_waveforms` model (amych_tf.contract; registry.PIPELINES):
training, evaluation and listening reach it for `--model=vae` (`python -m amych_tf.train`,
`.evaluate`, `.listen`, `compare`'s `vae` run); everything VAE-specific lives here.

Data: the waveforms `data_tools.prepare --waveform` stores beside the log-Mels
(dataset_info.json's `waveform`); a directory without them is refused with an error
that says how to prepare one. Batches are ({"waveform": [B, N]}, labels [B]).

Evaluation (`evaluate`), on the latent means (z = mean, no sampling):
  * latent_1nn_accuracy: each test clip takes the class of its nearest training clip
    in the latent space (the thesis' Table 5.2 metric; scikit-learn's 1-NN);
  * clustering: K-means (K = classes) on the training latent means, clusters mapped
    to the majority class of their training clips, then OA/AA on the split (our
    Table 2 row); an unsupervised run's centres are those its selection kept;
  * the bottleneck classifier's OA/AA (supervised; our Table 3 row) at the top level,
    or, unsupervised, the K-means OA/AA there (as the autoencoder's metrics.json);
  * rec_error (our L_rec): the mean squared difference between the project's log-Mel
    (`spectral.log_mel` with the dataset's FeatureConfig) of the decoded waveform and
    of the input waveform, both first resampled to the front end's rate (soxr_hq);
  * mfcc_dtw (the thesis' section 5.3): MFCCs as its Matlab call (25 ms windows, 5 ms
    hop, 20 mel bands over 200-1200 Hz, 13 coefficients, the first dropped) with
    librosa, and DTW (librosa.sequence.dtw) per coefficient, averaged over the 12:
    `reconstruction` = mean DTW distance between each input and its decoding;
    `centre_drift` = the thesis' eq. 5.3: (DTW to the decoded class centre - mean DTW
    to the other clips of its class) / their standard deviation, mean and std over
    the split. Class centres are the means of the training clips' latent means.
"""

from __future__ import annotations

import json
import os

import numpy as np

from amych_tf.baselines.vae import WAVEFORM_KEY
from amych_tf.evaluation import EvaluationError

# The thesis' MFCC (Matlab `mfcc(audio, fs, 25, 5, 0.97, @hamming, [200 1200], 20, 13, 22)`).
MFCC_WINDOW_SECONDS, MFCC_HOP_SECONDS = 0.025, 0.005
MFCC_BANDS, MFCC_COEFFICIENTS, MFCC_FMIN, MFCC_FMAX = 20, 13, 200.0, 1200.0
MORPH_STEPS = 9  # the thesis' figure 4.5 decodes 9 points from one centre to the other


class WaveformDataError(EvaluationError):
    """A dataset the VAE cannot read (prepared without waveforms)."""


def check_data(info, data_dir: str) -> None:
    """WaveformDataError (a ValueError) unless the dataset holds waveforms."""
    if not getattr(info, "waveform", None):
        raise WaveformDataError(
            f"{data_dir} holds no waveforms (dataset_info.json has no 'waveform'): the VAE reads the waveform; "
            "prepare the data again with `python -m data_tools.prepare ... --waveform`")


def waveform_dataset(data_dir: str, split: str, batch_size: int, info, *, training: bool = False, seed: int = 0,
                     with_metadata: bool = False, augment: bool = False):
    """({"waveform": float32 [B, N]} (+ "path" [B] with metadata), labels int32 [B]) of a split.

    Training: reshuffled every epoch (seeded), full batches only, and with `augment`, each clip
    through `vae.augment_waveform` with a fresh seeded draw every epoch; otherwise in stored order.
    """
    import tensorflow as tf

    from amych_tf.baselines.vae import augment_waveform

    check_data(info, data_dir)
    num_samples = info.waveform["num_samples"]
    spec = {WAVEFORM_KEY: tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64),
            "path": tf.io.FixedLenFeature([], tf.string)}

    def parse(serialized):
        parsed = tf.io.parse_single_example(serialized, spec)
        waveform = tf.reshape(tf.io.decode_raw(parsed[WAVEFORM_KEY], tf.float32, little_endian=True), [num_samples])
        features = {WAVEFORM_KEY: waveform}
        if with_metadata:
            features["path"] = parsed["path"]
        return features, tf.cast(parsed["label"], tf.int32)

    dataset = tf.data.TFRecordDataset(info.shard_paths(data_dir, split))
    if training:
        dataset = dataset.shuffle(max(info.split_counts.get(split, 1), 1), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    if training and augment:
        def augmented(example, draw):  # draw: a fresh int64 per clip and epoch, from `seed`
            features, label = example
            clip_seed = tf.stack([tf.constant(seed, tf.int64), draw])
            return {**features, WAVEFORM_KEY: augment_waveform(features[WAVEFORM_KEY], clip_seed)}, label

        draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        dataset = tf.data.Dataset.zip(dataset, draws).map(augmented, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size, drop_remainder=training).prefetch(tf.data.AUTOTUNE)


def latents(model, dataset, decode: bool = False) -> dict:
    """{"means" [N, D], "labels" [N], "inputs" [N, S], "decoded" [N, S] (decode)} over a dataset, in order.

    "inputs" are the waveforms as the model reads them (`WaveformVAE.input_waveform`), what
    "decoded" reconstructs."""
    from amych_tf.evaluation import traced

    embed = traced(model, "embed", lambda m, features: m.embed(features))
    decode_means = traced(model, "decode_means", lambda m, means: m.decode(means, training=False))
    result = {"means": [], "labels": [], "inputs": [], "decoded": []}
    for features, labels in dataset:
        means = embed(features)
        result["means"].append(means.numpy())
        result["labels"].append(labels.numpy())
        if decode:
            result["inputs"].append(model.input_waveform(features).numpy())
            result["decoded"].append(decode_means(means).numpy())
    return {key: np.concatenate(values) for key, values in result.items() if values}


def log_mels(waveforms: np.ndarray, sample_rate: int, feature_config) -> np.ndarray:
    """The project's log-Mel [N, T, F] of waveforms [N, S] at `sample_rate`, resampled to the front end's rate."""
    import librosa
    import tensorflow as tf

    from amych_tf import spectral

    waveforms = np.asarray(waveforms, np.float32)
    if sample_rate != feature_config.sample_rate:
        waveforms = librosa.resample(waveforms, orig_sr=sample_rate, target_sr=feature_config.sample_rate,
                                     res_type="soxr_hq", axis=-1)
    return spectral.log_mel(tf.constant(waveforms, tf.float32), feature_config).numpy()


def log_mel_rec_errors(inputs, decoded, sample_rate: int, feature_config) -> np.ndarray:
    """L_rec per clip: mean over frames and mel bins of the squared log-Mel difference, [N]."""
    difference = log_mels(decoded, sample_rate, feature_config) - log_mels(inputs, sample_rate, feature_config)
    return np.mean(np.square(difference), axis=(1, 2))


def thesis_mfcc(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    """MFCCs as the thesis computes them, first coefficient dropped: [12, frames]."""
    import librosa

    window = int(round(MFCC_WINDOW_SECONDS * sample_rate))
    mfcc = librosa.feature.mfcc(y=np.asarray(waveform, np.float32), sr=sample_rate, n_mfcc=MFCC_COEFFICIENTS,
                                n_fft=window, win_length=window, hop_length=int(round(MFCC_HOP_SECONDS * sample_rate)),
                                window="hamming", n_mels=MFCC_BANDS, fmin=MFCC_FMIN,
                                fmax=min(MFCC_FMAX, sample_rate / 2))
    return mfcc[1:]


def mfcc_dtw_distance(first: np.ndarray, second: np.ndarray) -> float:
    """The thesis' distance of two MFCC matrices [C, T]: DTW of each coefficient's sequence, averaged over C."""
    import librosa

    costs = [librosa.sequence.dtw(X=a[np.newaxis], Y=b[np.newaxis], metric="euclidean")[0][-1, -1]
             for a, b in zip(first, second)]
    return float(np.mean(costs))


def mfcc_dtw_summary(inputs, decoded, labels, centre_audio, sample_rate: int) -> dict:
    """Reconstruction DTW and the thesis' centre drift (eq. 5.3); see the module docstring."""
    input_mfcc = [thesis_mfcc(x, sample_rate) for x in inputs]
    reconstruction = [mfcc_dtw_distance(a, thesis_mfcc(b, sample_rate)) for a, b in zip(input_mfcc, decoded)]
    centre_mfcc = [thesis_mfcc(x, sample_rate) for x in centre_audio]
    drifts = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < 3:  # the standard deviation of pairwise distances needs at least two
            continue
        for i in members:
            pairwise = [mfcc_dtw_distance(input_mfcc[i], input_mfcc[j]) for j in members if j != i]
            centre = mfcc_dtw_distance(input_mfcc[i], centre_mfcc[label])
            spread = np.std(pairwise)
            if spread > 0:
                drifts.append((centre - np.mean(pairwise)) / spread)
    return {"reconstruction": float(np.mean(reconstruction)),
            "centre_drift_mean": float(np.mean(drifts)) if drifts else None,
            "centre_drift_std": float(np.std(drifts)) if drifts else None,
            "clips": len(reconstruction)}


def class_centres(means: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Mean latent point of each class [C, D] (NaN rows for classes without clips)."""
    return np.stack([means[labels == c].mean(0) if np.any(labels == c) else np.full(means.shape[1], np.nan)
                     for c in range(num_classes)])


def evaluate(model, data_dir: str, split: str = "test", batch_size: int = 32, info=None, seed: int = 0,
                 with_dtw: bool = True) -> dict:
    """The VAE's metrics on a split (module docstring); the train split gives 1-NN, K-means and centres."""
    from sklearn.neighbors import KNeighborsClassifier

    from amych_tf import data, metrics

    info = info or data.load_dataset_info(data_dir, expected_features=model.feature_config)
    check_data(info, data_dir)
    train = latents(model, waveform_dataset(data_dir, "train", batch_size, info))
    evaluated = latents(model, waveform_dataset(data_dir, split, batch_size, info), decode=True)
    labels = evaluated["labels"]
    nearest = KNeighborsClassifier(n_neighbors=1).fit(train["means"], train["labels"])
    latent_1nn = metrics.overall_accuracy(labels, nearest.predict(evaluated["means"]))

    centres = np.asarray(model.cluster_centres)
    if not np.any(centres):  # no K-means selected during training (supervised runs): fit it now
        model.fit_clusters(train["means"], seed=seed)
        centres = np.asarray(model.cluster_centres)

    def nearest_centre(means):
        return ((means[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)

    mapping = metrics.majority_mapping(train["labels"], nearest_centre(train["means"]), model.num_prototypes)
    rec_errors = log_mel_rec_errors(evaluated["inputs"], evaluated["decoded"], model.waveform["sample_rate"],
                                    model.feature_config)
    clustering = metrics.summarise(labels, nearest_centre(evaluated["means"]), rec_errors, info.num_classes,
                                   mapping=mapping, class_names=info.class_names)
    if model.supervised:
        classes = np.argmax(model.classify(evaluated["means"]).numpy(), axis=-1)
        summary = metrics.summarise(labels, classes, rec_errors, info.num_classes, class_names=info.class_names)
    else:
        summary = dict(clustering)
    summary.update(split=split, mode=model.mode, num_prototypes=model.num_prototypes, model=type(model).__name__,
                   latent_1nn_accuracy=latent_1nn,
                   clustering={key: clustering[key] for key in ("overall_accuracy", "average_accuracy",
                                                                "per_class_accuracy", "prototype_classes",
                                                                "unused_prototypes")})
    if with_dtw:
        train_centres = class_centres(train["means"], train["labels"], info.num_classes)
        centre_audio = model.decode(np.nan_to_num(train_centres).astype(np.float32), training=False).numpy()
        summary["mfcc_dtw"] = mfcc_dtw_summary(evaluated["inputs"], evaluated["decoded"], labels, centre_audio,
                                               model.waveform["sample_rate"])
    return summary


def summary_line(summary: dict) -> str:
    """One line: the top-level OA/AA (classifier or K-means), 1-NN, K-means, L_rec, MFCC-DTW."""
    line = (f"{summary['split']} OA {100 * summary['overall_accuracy']:.1f}%  "
            f"AA {100 * summary['average_accuracy']:.1f}%  latent 1-NN {100 * summary['latent_1nn_accuracy']:.1f}%  "
            f"K-means OA {100 * summary['clustering']['overall_accuracy']:.1f}%  "
            f"L_rec {summary['rec_error']:.4f}")
    if "mfcc_dtw" in summary:
        dtw = summary["mfcc_dtw"]
        drift = "n/a" if dtw["centre_drift_mean"] is None else f"{dtw['centre_drift_mean']:.2f}"
        line += f"  MFCC-DTW rec {dtw['reconstruction']:.2f} centre drift {drift}"
    return line + f"  ({summary['num_examples']} clips)"


# -- training (python -m amych_tf.train --model=vae) -------------------------------------


def train(config, info, flags_text: str | None = None) -> dict:
    """`amych_tf.training.trainer.train` for --model=vae (a TrainConfig): run files, selection, metrics.json.

    Selection as the other baselines (amych_tf.baselines.selection): supervised, the
    weights of best validation accuracy of the bottleneck classifier; unsupervised, of
    best validation OA after K-means on the latent means and the majority mapping.
    Training stops at `cpu_budget`, else after `patience` epochs without a better one.
    """
    import keras

    from amych_tf import evaluation
    from amych_tf.baselines import selection
    from amych_tf.training import callbacks, resume, trainer

    check_data(info, config.data_dir)
    strategy = trainer.make_strategy(config.devices)
    run_dir = trainer.worker_run_dir(config.model_dir, strategy)
    model = trainer.build_model(config, info, strategy)
    trainer.write_run_files(run_dir, config, model, info, flags_text)

    def split_data(split, training=False):
        return waveform_dataset(config.data_dir, split, config.batch_size if training else config.eval_batch_size,
                                info, training=training, seed=config.seed, augment=training and config.augment)

    train_data = split_data("train", training=True)
    validation_data = split_data("validation") if info.split_counts.get("validation", 0) else None
    os.makedirs(run_dir.checkpoints, exist_ok=True)
    best = run_dir.checkpoint("best")
    run_callbacks = [callbacks.NonFiniteGuard()]
    selecting = []
    if validation_data is not None:
        if model.supervised:
            selecting.append(selection.BestValidation(best, monitor="val_accuracy"))
        else:
            selecting.append(selection.ClusteringSelection(split_data("train"), validation_data, best,
                                                           seed=config.seed))
    monitor = selecting[0].monitor if selecting else "loss"
    selecting_rate = trainer.learning_rate_plateau(config, monitor) if selecting else []
    stopping = (selection.CPUBudget(config.cpu_budget) if config.cpu_budget else
                keras.callbacks.EarlyStopping(monitor=monitor, mode="min" if monitor == "loss" else "max",
                                              patience=config.patience))
    latest = keras.callbacks.ModelCheckpoint(run_dir.checkpoint("latest"), save_weights_only=True)
    # The backup (amych_tf.training.resume) restores the counters and files of the callbacks it
    # tracks; the CPU budget has none (the process's CPU time is its state).
    tracked = [*selecting, *selecting_rate, latest] + ([] if config.cpu_budget else [stopping])
    backup = resume.TrainingBackup(run_dir.backup, tracked=tracked)
    run_callbacks += [*selecting, *selecting_rate, stopping, keras.callbacks.TensorBoard(run_dir.logs), latest, backup]

    train_seconds, budget = trainer.fit_with_budget(model, config, train_data, validation_data, run_callbacks)
    budget["selected_epoch"] = {callback.monitor: callback.best_epoch for callback in selecting}
    if os.path.exists(best):
        model.load_weights(best)
    summary = evaluate(model, config.data_dir, "test", config.eval_batch_size, info=info, seed=config.seed)
    summary.update(train_seconds=round(train_seconds, 1), checkpoint="best" if os.path.exists(best) else "last",
                   num_parameters=int(model.count_params()), budget=budget, architecture=model.architecture)
    evaluation.write_report(summary, run_dir.metrics, info.class_names)
    backup.discard()  # kept until now: a kill during the evaluation resumes after training
    print(f"{summary_line(summary)}, trained {train_seconds:.0f} s")
    return summary


# -- listening (python -m amych_tf.listen on a VAE run) ----------------------------------------------


def write_wav(path: str, waveform, sample_rate: int) -> None:
    """16-bit WAV, written to a temporary name and renamed (no half-written file)."""
    import soundfile

    tmp = path + ".tmp.wav"
    soundfile.write(tmp, np.clip(np.asarray(waveform, np.float32), -1.0, 1.0), sample_rate, subtype="PCM_16")
    os.replace(tmp, path)


def input_waveform(path: str, waveform_config) -> np.ndarray:
    """An audio file as the VAE's input: read as data_tools.prepare reads it, resampled, cut or padded."""
    from data_tools import audio

    samples, sample_rate = audio.read_audio(path)
    return audio.fixed_length_waveform(samples.mean(axis=1), sample_rate, waveform_config["sample_rate"],
                                       waveform_config["num_samples"])


def strip_figure(waveforms, titles, feature_config, sample_rate: int):
    """One row of log-Mel spectrograms (the project's front end), one per waveform."""
    from amych_tf import plots

    spectra = log_mels(np.stack(waveforms), sample_rate, feature_config)
    figure, axes = plots.plt.subplots(1, len(spectra), figsize=(2.2 * len(spectra), 2.6), squeeze=False)
    limits = plots.level_limits(spectra, feature_config)
    for axis, spectrum, title in zip(axes[0], spectra, titles):
        plots.draw_spectrogram(axis, spectrum, feature_config, limits, title)
    figure.tight_layout()
    return figure


def save_figure(figure, path: str) -> None:
    from amych_tf import plots

    with open(path + ".tmp", "wb") as f:
        f.write(plots.figure_to_png(figure))
    os.replace(path + ".tmp", path)


def listen(model, data_dir: str, out_dir: str, inputs=(), morph: tuple[str, str] | None = None,
           batch_size: int = 32) -> dict:
    """Write the VAE's sounds to out_dir:

      centres/<k>-<class>.wav        each class's latent centre (mean of its training clips' latent
                                     means) decoded: the thesis' "middle point of each cluster"
      centres.png                    their spectrograms in a strip
      morph/<i>-<a>-to-<b>.wav       9 points on the line between two class centres decoded
                                     (the thesis' figure 4.5), `morph` = (class a, class b),
                                     default the first two classes
      morph.png                      the morph as a spectrogram strip
      inputs/<name>/input.wav, reconstruction.wav, strip.png   each of `inputs` (audio files)
                                     as the VAE hears it and decoded from its latent mean
    Returns {"centres": [paths], "morph": [paths], "inputs": [directories]}.
    """
    from amych_tf import data
    from amych_tf.audio_io import safe_name

    info = data.load_dataset_info(data_dir, expected_features=model.feature_config)
    check_data(info, data_dir)
    names = info.class_names
    rate = model.waveform["sample_rate"]
    train = latents(model, waveform_dataset(data_dir, "train", batch_size, info))
    centres = class_centres(train["means"], train["labels"], info.num_classes).astype(np.float32)
    present = [c for c in range(info.num_classes) if np.all(np.isfinite(centres[c]))]
    written = {"centres": [], "morph": [], "inputs": []}
    os.makedirs(os.path.join(out_dir, "centres"), exist_ok=True)
    centre_audio = model.decode(centres[present], training=False).numpy()
    for c, waveform in zip(present, centre_audio):
        path = os.path.join(out_dir, "centres", f"{c}-{safe_name(names[c])}.wav")
        write_wav(path, waveform, rate)
        written["centres"].append(path)
    save_figure(strip_figure(list(centre_audio), [names[c] for c in present], model.feature_config, rate),
                os.path.join(out_dir, "centres.png"))

    first, second = morph or (names[present[0]], names[present[1]])
    for name in (first, second):
        if name not in names:
            raise ValueError(f"--morph class {name!r} is not a class of the dataset ({', '.join(names)})")
    a, b = names.index(first), names.index(second)
    steps = np.linspace(0.0, 1.0, MORPH_STEPS, dtype=np.float32)[:, None]
    morph_audio = model.decode((1 - steps) * centres[a] + steps * centres[b], training=False).numpy()
    os.makedirs(os.path.join(out_dir, "morph"), exist_ok=True)
    for i, waveform in enumerate(morph_audio):
        path = os.path.join(out_dir, "morph", f"{i}-{safe_name(first)}-to-{safe_name(second)}.wav")
        write_wav(path, waveform, rate)
        written["morph"].append(path)
    save_figure(strip_figure(list(morph_audio), [f"{t:.2f}" for t in steps[:, 0]], model.feature_config, rate),
                os.path.join(out_dir, "morph.png"))

    for path in inputs:
        waveform = model.input_waveform(input_waveform(path, model.waveform)[None]).numpy()[0]
        decoded = model.decode(model.embed({WAVEFORM_KEY: waveform[None]}), training=False).numpy()[0]
        directory = os.path.join(out_dir, "inputs", safe_name(os.path.splitext(os.path.basename(path))[0]))
        os.makedirs(directory, exist_ok=True)
        write_wav(os.path.join(directory, "input.wav"), waveform, rate)
        write_wav(os.path.join(directory, "reconstruction.wav"), decoded, rate)
        save_figure(strip_figure([waveform, decoded], ["input", "reconstruction"], model.feature_config, rate),
                    os.path.join(directory, "strip.png"))
        written["inputs"].append(directory)
    with open(os.path.join(out_dir, "listen.json"), "w", encoding="utf-8") as f:
        json.dump({"morph": [first, second], **written}, f, indent=2)
    return written
