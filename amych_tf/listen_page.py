"""The listening page: one self-contained HTML report of a run (`python -m amych_tf.listen --html`).

`write_page` writes index.html and every file it links (relative links only,
nothing from the network), so the directory opens from file:// and from any
static server. The HTML is built with the standard library (html.escape and
f-strings): the page is a handful of tables and figures, which needs no
template engine and no extra dependency.

Sections: the run (its test metrics and hearing fidelity, its curriculum stages
and config), the confusion matrix, the prototypes (spectrum, player, class,
clips won; APNet: its decoded prototypes), and chosen test clips (the wrong
ones first, then correct ones) as input / reconstruction / winning prototype,
with the winner's explanation figure, the runner-up's error, and the winner after each
curriculum stage when the run kept its stage checkpoints.
"""

from __future__ import annotations

import html
import json
import os
import shutil

from amych_tf import listening
from amych_tf.audio_io import safe_name
from amych_tf.rundir import RunDir
from amych_tf.training.curriculum import row_name

STYLE = """
body { font-family: sans-serif; margin: 1.5em; max-width: 80em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
figure { display: inline-block; margin: 0.4em; vertical-align: top; }
figcaption { font-size: 0.9em; }
img { max-width: 100%; }
td img { width: 16em; }
.wrong { background: #fde8e8; }
.correct { background: #e8f6e8; }
"""

# Sorting is a convenience: without JavaScript the tables read in their written order.
SORT_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach(function (header, column) {
  header.style.cursor = "pointer";
  header.title = "Sort by this column";
  header.addEventListener("click", function () {
    var body = header.closest("table").tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var ascending = header.dataset.order !== "ascending";
    header.dataset.order = ascending ? "ascending" : "descending";
    rows.sort(function (a, b) {
      var x = a.cells[column].dataset.value || a.cells[column].textContent;
      var y = b.cells[column].dataset.value || b.cells[column].textContent;
      var order = isNaN(x) || isNaN(y) ? x.localeCompare(y) : x - y;
      return ascending ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""


def escape(value) -> str:
    return html.escape(str(value), quote=True)


def number(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def relative(path: str, out_dir: str) -> str:
    """A link from index.html in `out_dir` to `path` (forward slashes, each part URL-quoted)."""
    from urllib.parse import quote

    return "/".join(quote(part) for part in os.path.relpath(path, out_dir).split(os.sep))


def image(path: str, out_dir: str, alt: str) -> str:
    return f'<img src="{relative(path, out_dir)}" alt="{escape(alt)}">'


def captioned_image(path: str, out_dir: str, alt: str, caption: str) -> str:
    return f"<figure>{image(path, out_dir, alt)}<figcaption>{escape(caption)}</figcaption></figure>"


def player(path: str, out_dir: str, label: str) -> str:
    """A labelled <audio> player in a <figure> (the caption names what plays)."""
    return (f'<figure><audio controls preload="metadata" src="{relative(path, out_dir)}" '
            f'aria-label="{escape(label)}"></audio><figcaption>{escape(label)}</figcaption></figure>')


def metrics_section(summary: dict) -> str:
    rows = [("Clips (test)", summary["num_examples"]),
            ("OA", f"{100 * summary['overall_accuracy']:.1f}%"),
            ("AA", f"{100 * summary['average_accuracy']:.1f}%"),
            ("L_rec", number(summary["rec_error"], 4))]
    fidelity = summary.get("fidelity")
    if fidelity:
        crisp, pitch = fidelity["prototype_crispness"], fidelity["pitch_tracking"]
        rows += [("Fine structure explained", number(fidelity["fine_structure_explained"])),
                 ("Prototype crispness median / min", f"{number(crisp['median'])} / {number(crisp['min'])}"),
                 ("Pitch tracking r median", number(pitch["r_median"])),
                 ("Pitch tracking slope median", number(pitch["slope_median"]))]
    body = "".join(f"<tr><th scope=\"row\">{escape(name)}</th><td>{escape(value)}</td></tr>" for name, value in rows)
    return (f"<h2>Metrics</h2><p>On the test split, with the checkpoint listened to "
            f"({escape(summary['model'])}, {escape(summary['mode'])}).</p><table>{body}</table>")


def run_section(model_dir: str, config: dict) -> str:
    """Curriculum stages reached (stage checkpoints, training's metrics.json) and the run's config."""
    stages = [row_name(name) for _, name, _ in RunDir(model_dir).stage_checkpoints()]
    parts = ["<h2>Run</h2>", f"<p>Model dir: <code>{escape(os.path.abspath(model_dir))}</code></p>"]
    training_path = RunDir(model_dir).metrics
    if os.path.isfile(training_path):
        with open(training_path, encoding="utf-8") as f:
            training = json.load(f)
        facts = [f"{key}: {training[key]}" for key in ("curriculum_stage", "checkpoint", "train_seconds",
                                                       "num_parameters") if key in training]
        parts.append(f"<p>Training: {escape(', '.join(facts))}</p>")
    parts.append("<p>Curriculum stages reached: " + (escape(", ".join(stages)) if stages else
                                                      "no stage checkpoints") + "</p>")
    parts.append("<details><summary>config.json</summary><pre>" + escape(json.dumps(config, indent=2))
                 + "</pre></details>")
    return "".join(parts)


def confusion_section(summary: dict, class_names, out_dir: str) -> str:
    from amych_tf import evaluation

    output = os.path.join(out_dir, "eval-test.json")
    evaluation.write_report(summary, output, class_names)
    parts = ["<h2>Confusion matrix</h2>",
             captioned_image(os.path.splitext(output)[0] + ".png", out_dir,
                             "Confusion matrix of the test split: true class by row, predicted by column",
                             "Test split: rows true class, columns predicted class.")]
    if "prototype_classes" in summary:
        mapped = [escape(class_names[c]) if c >= 0 else "no class (wins no training clip)"
                  for c in summary["prototype_classes"]]
        rows = "".join(f"<tr><td>cluster{k}</td><td>{name}</td></tr>" for k, name in enumerate(mapped))
        parts.append("<h3>Cluster to class</h3><p>Each cluster is mapped to the majority class of the training "
                     f"clips it wins.</p><table><thead><tr><th>Cluster</th><th>Class</th></tr></thead>"
                     f"<tbody>{rows}</tbody></table>")
    return "".join(parts)


def prototype_images(model, out_dir: str) -> list[str]:
    """One spectrum PNG per prototype (prototypes/<k>-<name>.png), beside its WAV."""
    from amych_tf import plots

    names, paths = model.prototype_names(), []
    for k, prototype in enumerate(model.prototypes.numpy()):
        paths.append(os.path.join(out_dir, "prototypes", f"{k}-{safe_name(names[k])}.png"))
        with open(paths[-1], "wb") as f:
            f.write(plots.figure_to_png(plots.prototype_gallery(prototype[None], model.feature_config,
                                                                [names[k]], columns=1)))
    return paths


def prototypes_section(model, wav_paths, image_paths, classes, wins, class_names, out_dir: str) -> str:
    names = model.prototype_names()
    rows = []
    for k, name in enumerate(names):
        class_name = class_names[classes[k]] if classes[k] >= 0 else "no class"
        rows.append(f"<tr><td data-value=\"{k}\">{k}</td><td>{escape(name)}</td><td>{escape(class_name)}</td>"
                    f"<td data-value=\"{wins[k]}\">{wins[k]}</td>"
                    f"<td>{image(image_paths[k], out_dir, f'Spectrum of prototype {k} ({name})')}</td>"
                    f"<td>{player(wav_paths[k], out_dir, f'Prototype {k} ({name}) held for a second')}</td></tr>")
    return ("<h2>Prototypes</h2><p>Each prototype is one spectrum, played held. Wins: test clips whose "
            "reconstruction it makes best.</p><table class=\"sortable\"><thead><tr><th>#</th><th>Prototype</th>"
            "<th>Class</th><th>Test clips won</th><th>Spectrum</th><th>Listen</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def apnet_section(wav_paths, out_dir: str) -> str:
    players = "".join(player(path, out_dir, f"Decoded prototype {os.path.splitext(os.path.basename(path))[0]}")
                      for path in wav_paths)
    gallery = os.path.join(out_dir, "prototype_gallery.png")
    return ("<h2>Prototypes (decoded)</h2><p>APNet's latent prototypes, each decoded with the pooling masks of "
            "its nearest training window and named by the class its dense-layer weights favour.</p>"
            + captioned_image(gallery, out_dir, "Decoded APNet prototypes as spectrograms", "Decoded prototypes")
            + f"<div>{players}</div>")


def collect_test_clips(model, data_dir: str, info, batch_size: int) -> dict:
    """Every test clip's winner, errors, label and metadata, in file order."""
    import numpy as np

    from amych_tf import data, evaluation

    explain = evaluation.traced(model, "explain_winner", lambda m, features: m.explain_winner(features))
    columns = {key: [] for key in ("rec_errors", "label", "path", "index", "num_frames")}
    for features, labels in data.evaluation_dataset(data_dir, "test", batch_size=batch_size, info=info,
                                                    with_metadata=True):
        columns["rec_errors"].append(explain({"log_mel": features["log_mel"],
                                              "mask": features["mask"]})["rec_errors"].numpy())
        columns["label"].append(labels.numpy())
        for key in ("path", "index", "num_frames"):
            columns[key].append(features[key].numpy())
    clips = {key: np.concatenate(value) for key, value in columns.items()}
    order = np.argsort(clips["index"])
    return {key: value[order] for key, value in clips.items()}


def choose_examples(correct, labels, count: int):
    """Indices of up to `count` clips: wrong ones first (up to half, or more when correct ones run out),
    then correct ones; each group takes one clip of each class in turn, so the examples cover the classes."""
    import numpy as np

    def one_class_at_a_time(indices):
        rank = np.zeros(len(indices), int)
        for label in np.unique(labels[indices]):
            rank[labels[indices] == label] = np.arange(np.sum(labels[indices] == label))
        return list(indices[np.lexsort((labels[indices], rank))])

    wrong, right = np.flatnonzero(~correct), np.flatnonzero(correct)
    num_wrong = min(len(wrong), max(count - len(right), -(-count // 2)))
    return one_class_at_a_time(wrong)[:num_wrong] + one_class_at_a_time(right)[:count - num_wrong]


def clip_log_mels(data_dir: str, info, clip_indices, multiple_of: int) -> dict:
    """{index: (log-Mel [T, F] tiled to a multiple of frames, real frames)} of the given test clips."""
    from amych_tf import data

    wanted, found = set(int(i) for i in clip_indices), {}
    for features, _ in data.evaluation_dataset(data_dir, "test", batch_size=1, info=info, with_metadata=True,
                                               multiple_of=multiple_of):
        index = int(features["index"][0])
        if index in wanted:
            found[index] = (features["log_mel"].numpy()[0], int(features["num_frames"][0]))
    return found


def examples_section(model, model_dir: str, data_dir: str, info, clips: dict, classes, chosen, out_dir: str,
                     audio_dir: str | None, n_iter: int) -> str:
    import numpy as np

    from amych_tf import registry

    names = model.prototype_names()
    checkpoints = RunDir(model_dir).stage_checkpoints()
    # A second model takes the stage checkpoints' weights, so `model` keeps the ones listened to.
    stage_model = registry.load_model(model_dir, checkpoints[0][2])[0] if checkpoints else None
    log_mels = clip_log_mels(data_dir, info, clips["index"][chosen], 2**model.n_pools)
    parts = ["<h2>Test clips</h2><p>Input (re-synthesised from its log-Mel: what the model hears), its "
             "reconstruction by the winning prototype, and the winning prototype. The explanation figure "
             "shows the three on one colour scale with the winner's gain, pitch shift and filter curves; "
             "the grid shows every prototype's reconstruction with its error.</p>"]
    for i in chosen:
        index, label = int(clips["index"][i]), int(clips["label"][i])
        source = clips["path"][i].decode()
        rec_errors = clips["rec_errors"][i]
        winner, runner_up = (int(k) for k in np.argsort(rec_errors)[:2])
        predicted = classes[winner]
        correct = predicted == label
        log_mel, frames = log_mels[index]
        title = f"test clip {index}: {os.path.basename(source)} (class {info.class_names[label]})"
        stem = os.path.splitext(os.path.basename(source))[0]
        directory = os.path.join(out_dir, "examples", safe_name(f"{index}-{stem}"))
        true_name = names[list(classes).index(label)] if model.mode == "supervised" and label in classes else None
        listening.listen_to_log_mel(model, log_mel, frames, directory, title, true_name, n_iter)
        players = [player(os.path.join(directory, "input.wav"), out_dir, f"Input, clip {index} (from its log-Mel)"),
                   player(os.path.join(directory, f"winner-{winner}-{safe_name(names[winner])}.wav"), out_dir,
                          f"Reconstruction of clip {index} by prototype {names[winner]}"),
                   player(os.path.join(out_dir, "prototypes", f"{winner}-{safe_name(names[winner])}.wav"),
                          out_dir, f"Winning prototype {names[winner]}")]
        original = os.path.join(audio_dir, source) if audio_dir else None
        if original and os.path.isfile(original):
            copy = os.path.join(directory, "original" + os.path.splitext(source)[1])
            shutil.copyfile(original, copy)
            players.insert(0, player(copy, out_dir, f"Original recording of clip {index}"))
        verdict = "correct" if correct else "wrong"
        predicted_name = info.class_names[predicted] if predicted >= 0 else "no class"
        parts.append(
            f'<section class="{verdict}"><h3>{escape(title)}: {verdict}</h3>'
            f"<p>Won by {escape(names[winner])} (predicts {escape(predicted_name)}), L_rec "
            f"{number(float(rec_errors[winner]), 4)}; runner-up {escape(names[runner_up])}, L_rec "
            f"{number(float(rec_errors[runner_up]), 4)}.</p><div>{''.join(players)}</div>"
            + captioned_image(os.path.join(directory, "explanation.png"), out_dir,
                              f"Clip {index}: input, reconstruction by {names[winner]} and the prototype on one "
                              "colour scale, with the gain, pitch and filter curves",
                              "Input | reconstruction | winning prototype, and the winner's curves")
            + captioned_image(os.path.join(directory, "grid.png"), out_dir,
                              f"Clip {index} reconstructed by every prototype, with each error",
                              "Every prototype's reconstruction and L_rec")
            + (stages_figure(stage_model, checkpoints, log_mel, frames, directory, title, index, out_dir, n_iter)
               if stage_model else "") + "</section>")
    return "".join(parts)


def stages_figure(stage_model, checkpoints, log_mel, frames: int, directory: str, title: str, index: int,
                  out_dir: str, n_iter: int) -> str:
    """The clip's Figure 5 (the winner after each curriculum stage) with a player per stage."""
    figure = listening.stages_of_log_mel(stage_model, checkpoints, log_mel, frames, directory, title, n_iter)
    players = "".join(
        player(os.path.join(directory, f"stage-{stage_index}-{stage}.wav"), out_dir,
               f"Clip {index} reconstructed after stage {row_name(stage)}")
        for stage_index, stage, _ in checkpoints)
    return captioned_image(figure, out_dir, f"Clip {index}: input, reconstruction and winning prototype after "
                           "each curriculum stage", "After each curriculum stage") + f"<div>{players}</div>"


def write_page(model, config: dict, model_dir: str, data_dir: str, out_dir: str, examples: int = 6,
               audio_dir: str | None = None, batch_size: int = 32, n_iter: int = 64) -> str:
    """Write `out_dir`/index.html and the files it links; returns the page's path.

    `audio_dir`: where the dataset's source files are (manifest paths are relative
    to it; the prepared dataset does not record it); each example then also plays
    its original recording.
    """
    import numpy as np

    from amych_tf import data, evaluation

    info = data.load_dataset_info(data_dir, expected_features=model.feature_config)
    if info.split_counts.get("test", 0) == 0:
        raise evaluation.EvaluationError(f"dataset {data_dir!r} has no test clips")
    os.makedirs(out_dir, exist_ok=True)
    summary = evaluation.evaluate_model(model, data_dir, "test", batch_size, info=info)
    sections = [metrics_section(summary), run_section(model_dir, config),
                confusion_section(summary, info.class_names, out_dir)]
    if model.decodes_prototypes:
        sections.append(apnet_section(listening.listen_to_apnet_prototypes(model, data_dir, out_dir, batch_size, n_iter),
                                      out_dir))
    elif model.playable:
        classes = np.asarray(summary["prototype_classes"]) if "prototype_classes" in summary else \
            evaluation.prototype_classes(model)
        clips = collect_test_clips(model, data_dir, info, batch_size)
        winners = clips["rec_errors"].argmin(1)
        wins = np.bincount(winners, minlength=model.num_prototypes)
        wav_paths = listening.listen_to_prototypes(model, out_dir, n_iter=n_iter)
        sections.append(prototypes_section(model, wav_paths, prototype_images(model, out_dir), classes, wins,
                                           info.class_names, out_dir))
        averages = listening.listen_to_class_averages(model, data_dir, out_dir, batch_size, model_dir)
        sections.append(captioned_image(averages, out_dir, "Each prototype beside the average spectrum of its class",
                                        "Prototypes and their class's average training spectrum"))
        chosen = choose_examples(classes[winners] == clips["label"], clips["label"], examples)
        sections.append(examples_section(model, model_dir, data_dir, info, clips, classes, chosen, out_dir,
                                         audio_dir, n_iter))
    title = f"Listening page: {os.path.basename(os.path.abspath(model_dir))}"
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>'
            f"<body><h1>{escape(title)}</h1>{''.join(sections)}<script>{SORT_SCRIPT}</script></body></html>\n")
    path = os.path.join(out_dir, "index.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path
