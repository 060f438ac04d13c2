"""export: a SavedModel that plain TensorFlow serves, equal to the Keras model, strict about its inputs."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from helpers import FEATURES, harmonic_tone, make_prepared_dir, run_command_main, write_model_dir

from amych_tf import data, evaluation, registry, serving, spectral

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in a fresh interpreter that cannot import amych_tf, data_tools or Keras:
# calls every signature on inputs.npz, feeds bad inputs, replays the warm-up file.
SERVE_WITHOUT_AMYCH_TF = textwrap.dedent("""
    import json, sys
    for blocked in ("amych_tf", "data_tools", "keras"):
        sys.modules[blocked] = None  # any import of these now raises ImportError
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    model_path, inputs_path, outputs_path = sys.argv[1:]
    loaded = tf.saved_model.load(model_path)
    inputs = dict(np.load(inputs_path))
    outputs = {}
    for name, signature, argument in [("long", "serving_default", "waveform"), ("short", "serving_default", "waveform"),
                                      ("logmel", "classify_logmel", "log_mel"), ("long", "explain", "waveform")]:
        result = loaded.signatures[signature](**{argument: tf.constant(inputs[name])})
        for key, value in result.items():  # strings as fixed-width bytes: np.load refuses object arrays
            value = value.numpy()
            outputs[f"{signature}/{name}/{key}"] = value.astype("S") if value.dtype == object else value
    np.savez(outputs_path, **outputs)

    # Every bad input of its argument to every signature, each followed by a good request,
    # which must get the answer it got before; then a batch of 64 clips of 10 s.
    errors, answers_after, large_batch = {}, {}, {}
    for signature, argument, good in [("serving_default", "waveform", "long"), ("explain", "waveform", "long"),
                                      ("classify_logmel", "log_mel", "logmel")]:
        function = loaded.signatures[signature]
        reference = function(**{argument: tf.constant(inputs[good])})["prototype"].numpy()
        for name in sorted(inputs):
            if not name.startswith(f"bad_{argument}/"):
                continue
            case = name.split("/")[1]
            try:
                function(**{argument: tf.constant(inputs[name])})
                errors[f"{signature}/{case}"] = None
            except Exception as error:
                errors[f"{signature}/{case}"] = [type(error).__name__, str(error)]
            answer = function(**{argument: tf.constant(inputs[good])})["prototype"].numpy()
            answers_after[f"{signature}/{case}"] = answer.tolist() == reference.tolist()
        result = function(**{argument: tf.constant(inputs[f"large_{argument}"])})
        large_batch[signature] = {key: list(value.shape) for key, value in result.items()}

    warmup = []
    path = model_path + "/assets.extra/tf_serving_warmup_requests"
    for record in tf.data.TFRecordDataset(path):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        request = log.predict_log.request
        arguments = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
        result = loaded.signatures[request.model_spec.signature_name](**arguments)
        warmup.append([request.model_spec.signature_name, sorted(result)])
    print(json.dumps({"errors": errors, "answers_after": answers_after, "large_batch": large_batch, "warmup": warmup}))
""")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "amych_tf.export", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


def run_main(capsys, *args):
    """The export command's main() in this process (the first export of the test above starts it anew)."""
    from amych_tf.cli import export

    return run_command_main(export, list(args), capsys, defined_by="export_version")


def xla_only_functions(saved_model_dir: str) -> list[str]:
    """Names of the SavedModel's functions that must be compiled with XLA (`_XlaMustCompile`)."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    return [function.signature.name for graph in saved_model.meta_graphs for function in graph.graph_def.library.function
            if "_XlaMustCompile" in function.attr and function.attr["_XlaMustCompile"].b]


def keras_outputs(model, waveform):
    """What evaluate computes: prepare's tiling to 16 frames, log-Mel, tile-padding to 16 frames, the model."""
    min_samples = FEATURES.num_samples(data.MIN_FRAMES)
    waveform = np.stack([np.resize(w, max(len(w), min_samples)) for w in waveform])
    log_mel = spectral.log_mel(waveform, FEATURES)
    frames = log_mel.shape[1]
    padded, mask = data.tile_pad(log_mel, tf.fill([log_mel.shape[0]], frames), 16)
    outputs = model({"log_mel": padded, "mask": mask}, training=False, return_details=True)
    return log_mel.numpy(), {k: v.numpy() for k, v in outputs.items()}, frames


@pytest.mark.slow
def test_exported_model_serves_without_amych_tf(tmp_path, capsys):
    model_dir, export_dir = str(tmp_path / "run"), str(tmp_path / "saved_models" / "tiny")
    write_model_dir(model_dir)
    result = run_cli(f"--model_dir={model_dir}", f"--export_dir={export_dir}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(os.listdir(export_dir)) == ["1"]  # TF Serving's layout, no staging left behind
    version_dir = os.path.join(export_dir, "1")
    assert xla_only_functions(version_dir) == []  # TF Serving runs these only behind an experimental flag
    with open(os.path.join(version_dir, "assets.extra", serving.METADATA_FILENAME)) as f:
        metadata = json.load(f)
    assert metadata["feature_config"] == FEATURES.to_dict() and metadata["prototype_classes"] == [0, 1, 2]

    rng = np.random.default_rng(0)
    long = np.stack([harmonic_tone(f0, 16000, seconds=1.0) for f0 in (220.0, 330.0)])
    long += 0.01 * rng.standard_normal(long.shape).astype(np.float32)
    short = harmonic_tone(440.0, 16000, seconds=0.125)[None]  # 2000 samples < 16 frames: tiled
    logmel_input = spectral.log_mel(long, FEATURES).numpy()[:, :37]  # not a multiple of 16: padded
    bad = {  # what each signature's argument must refuse with InvalidArgument, and the message saying why
        "waveform": {
            "rank1": (long[0], "waveform must be float32 [batch, samples]"),
            "rank3": (long[:, None, :], "waveform must be float32 [batch, samples]"),
            "float64": (long.astype(np.float64), "expected to be a float tensor"),
            "int32": (long.astype(np.int32), "expected to be a float tensor"),
            "empty": (np.zeros((0, 16000), np.float32), "empty batch"),
            "ten_samples": (long[:, :10], "audio too short: at least 1024 samples"),
            "too_short": (np.zeros((1, FEATURES.n_fft - 1), np.float32), "audio too short: at least 1024 samples"),
            "nan": (np.where(np.arange(16000) == 5, np.nan, long[:1]), "waveform has NaN or Inf values"),
            "inf": (np.where(np.arange(16000) == 5, -np.inf, long[:1]), "waveform has NaN or Inf values"),
        },
        "log_mel": {
            "rank2": (logmel_input[0], f"log_mel must be float32 [batch, frames, {FEATURES.n_mels}]"),
            "rank4": (logmel_input[..., None], f"log_mel must be float32 [batch, frames, {FEATURES.n_mels}]"),
            "float64": (logmel_input.astype(np.float64), "expected to be a float tensor"),
            "empty": (np.zeros((0, 32, FEATURES.n_mels), np.float32), "empty batch"),
            "wrong_mels": (np.zeros((1, 32, FEATURES.n_mels + 1), np.float32),
                           f"log_mel must have {FEATURES.n_mels} mel bins"),
            "no_frames": (np.zeros((1, 0, FEATURES.n_mels), np.float32), "log_mel has no frames"),
            "nan": (np.where(np.arange(37)[:, None] == 5, np.nan, logmel_input), "log_mel has NaN or Inf values"),
            "inf": (np.where(np.arange(37)[:, None] == 5, np.inf, logmel_input), "log_mel has NaN or Inf values"),
        },
    }
    large = {"waveform": np.tile(long[:1], (64, 10)), "log_mel": np.tile(logmel_input[:1], (64, 17, 1))}  # 10 s
    np.savez(tmp_path / "inputs.npz", long=long, short=short, logmel=logmel_input,
             **{f"bad_{argument}/{case}": value for argument, cases in bad.items()
                for case, (value, _) in cases.items()},
             **{f"large_{argument}": value for argument, value in large.items()})
    served = subprocess.run(
        [sys.executable, "-c", SERVE_WITHOUT_AMYCH_TF, version_dir, str(tmp_path / "inputs.npz"),
         str(tmp_path / "outputs.npz")], capture_output=True, text=True, cwd=str(tmp_path), timeout=300)
    assert served.returncode == 0, served.stderr[-3000:]
    report = json.loads(served.stdout.strip().splitlines()[-1])
    outputs = dict(np.load(tmp_path / "outputs.npz"))

    model, _ = registry.load_model(model_dir)
    beta_f = float(model.beta) * FEATURES.n_mels
    for name, waveform in (("long", long), ("short", short)):
        _, expected, _ = keras_outputs(model, waveform)
        rec = expected["rec_errors"]
        np.testing.assert_allclose(outputs[f"serving_default/{name}/rec_errors"], rec, rtol=1e-4, atol=1e-6)
        winner = rec.argmin(1)
        np.testing.assert_array_equal(outputs[f"serving_default/{name}/prototype"], winner)
        np.testing.assert_array_equal(outputs[f"serving_default/{name}/class_id"], winner)
        assert [n.decode() for n in outputs[f"serving_default/{name}/class_name"]] == [
            model.class_names[k] for k in winner]
        logits = -beta_f * rec
        probabilities = np.exp(logits - logits.max(1, keepdims=True))
        np.testing.assert_allclose(outputs[f"serving_default/{name}/probabilities"],
                                   probabilities / probabilities.sum(1, keepdims=True), rtol=1e-4, atol=1e-6)

    padded, mask = data.tile_pad(logmel_input, tf.fill([2], 37), 16)
    rec = model({"log_mel": padded, "mask": mask}, training=False)["rec_errors"].numpy()
    np.testing.assert_allclose(outputs["classify_logmel/logmel/rec_errors"], rec, rtol=1e-4, atol=1e-6)

    log_mel, expected, frames = keras_outputs(model, long)
    winner = expected["rec_errors"].argmin(1)
    batch = np.arange(len(winner))
    np.testing.assert_allclose(outputs["explain/long/log_mel"], log_mel, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outputs["explain/long/reconstruction"],
                               expected["reconstructions"][batch, :frames, winner], rtol=1e-4, atol=1e-5)
    for name in serving.EXPLAINED_PARAMETERS:
        np.testing.assert_allclose(outputs[f"explain/long/{name}"], expected[name][batch, :frames, winner],
                                   rtol=1e-4, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(outputs["explain/long/prototype_spectrum"], model.prototypes.numpy()[winner])

    # Bad requests: InvalidArgument saying why (a wrong dtype is refused before the graph runs),
    # and the loaded model answers the next good request as before.
    for signature, argument in [("serving_default", "waveform"), ("explain", "waveform"),
                                ("classify_logmel", "log_mel")]:
        for case, (_, message) in bad[argument].items():
            key = f"{signature}/{case}"
            assert report["errors"][key] is not None, f"{key} was accepted"
            kind, text = report["errors"][key]
            assert kind == "InvalidArgumentError" and message in text, (key, kind, text)
            assert report["answers_after"][key], f"a good request after {key} got another answer"
    # 64 clips of 10 s: answered (622 frames each).
    assert report["large_batch"]["serving_default"]["probabilities"] == [64, 3]
    assert report["large_batch"]["explain"]["reconstruction"] == [64, FEATURES.num_frames(160000), FEATURES.n_mels]
    assert report["large_batch"]["classify_logmel"]["rec_errors"] == [64, 3]

    assert [signature for signature, _ in report["warmup"]] == list(serving.SIGNATURES)
    assert report["warmup"][0][1] == ["class_id", "class_name", "probabilities", "prototype", "rec_errors"]

    # The next export is version 2; an existing version is refused, leaving nothing behind.
    status, _, stderr = run_main(capsys, f"--model_dir={model_dir}", f"--export_dir={export_dir}",
                                 "--export_version=1")
    assert status == 2 and "exists already" in stderr
    assert sorted(os.listdir(export_dir)) == ["1"]
    assert serving.next_version(export_dir) == 2


def test_unsupervised_prototypes_are_named_by_training_majority(tmp_path):
    lengths = {"train": [16] * 6, "validation": [], "test": []}
    make_prepared_dir(tmp_path / "data", lengths, num_mels=FEATURES.n_mels, sample_rate=FEATURES.sample_rate,
                      n_fft=FEATURES.n_fft, hop_length=FEATURES.hop_length)
    info = data.load_dataset_info(str(tmp_path / "data"))
    model = write_model_dir(str(tmp_path / "run"), mode="unsupervised", data_dir=str(tmp_path / "data"))

    classes = evaluation.prototype_classes(model, str(tmp_path / "data"))
    train_split = data.evaluation_dataset(str(tmp_path / "data"), "train", batch_size=4, info=info)
    rec, labels = evaluation.collect_rec_errors(model, train_split)
    winners = rec.argmin(1)
    for k in range(3):
        won = labels[winners == k]
        assert classes[k] == (np.bincount(won).argmax() if len(won) else -1)
    # train --export_dir serves this mapping (tests/test_train.py checks the served classes).


def test_export_errors_are_one_line(tmp_path, capsys):
    status, _, stderr = run_main(capsys, f"--model_dir={tmp_path}/missing", f"--export_dir={tmp_path}/out")
    assert status == 2 and stderr.strip().startswith("error:") and stderr.count("\n") == 1, stderr
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("names, expected", [([], 1), (["1", "3", "tmp", ".4.tmp-x"], 4)])
def test_next_version(tmp_path, names, expected):
    for name in names:
        os.makedirs(tmp_path / name)
    assert serving.next_version(str(tmp_path)) == expected
