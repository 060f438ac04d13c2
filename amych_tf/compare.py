r"""The paper's three tables on one prepared dataset: our model against its baselines.

    python -m amych_tf.compare --data_dir=data/sol --out_dir=runs/compare_sol --configs=sol
    python -m amych_tf.compare --data_dir=demo/prepared --out_dir=demo/compare --configs=demo

Trains (or, when `<out_dir>/<run>/metrics.json` exists, collects) six runs with
`amych_tf.train`, each from `<configs_dir>/<configs>_<run>.cfg` with --data_dir,
--model_dir=<out_dir>/<run> and `--train_flags` appended (later flags win):

  sup           PlayablePrototypes, supervised      (Tables 1 and 3)
  unsup         PlayablePrototypes, unsupervised    (Tables 1 and 2)
  direct        temporal CNN classifier             (Table 3)
  autoencoder   autoencoder + K-means               (Table 2)
  apnet         APNet, and APNet + K-means          (Tables 3 and 2)
  vae           the sounds thesis' waveform VAE: its bottleneck classifier, and
                K-means on its latent means (Tables 3 and 2; the data must be
                prepared with --waveform; amych_tf.baselines.vae)

and writes to out_dir `table1.md/json` (our model's curriculum ablation in both
settings, on the validation split as in the paper), `table2.md/json`
(clustering) and `table3.md/json` (classification), both on the test split,
with each run's parameter count, budget, training time (wall clock of `fit`) and the
CPU time of its whole process (user + system, so 2 busy cores count twice).

Budgets (`--match_cpu_budget`, on by default): a baseline trains at least as long in
CPU time as our model in the same table. `direct` gets `--cpu_budget=` the CPU
time of `sup`, `autoencoder` that of `unsup`, `apnet` and `vae` (in both tables) the larger
of the two; runs are trained in the order above, so ours come first. Every
baseline keeps the weights of best validation accuracy (the clustering ones: of
best validation OA after K-means and the majority mapping; amych_tf.train).
`--paper=sol|librispeech` adds the paper's numbers beside ours. L_rec is shown
x 1000, the scale of the paper's tables.
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
RUNS = ("sup", "unsup", "direct", "autoencoder", "apnet", "vae")
RUN_FILENAME = "compare_run.json"
REC_SCALE = 1000.0

# The paper's tables (ISMIR 2022), OA / AA in %, L_rec x 1000; Table 1 on validation.
PAPER = {
    "sol": {
        "table1": {"unsup": {"raw": (29.3, 13.2, 12.4), "gain": (32.2, 15.8, 3.4), "pitch": (37.6, 19.1, 2.6),
                             "filters": (33.4, 14.6, 1.5)},
                   "sup": {"raw": (28.4, 39.5, 12.9), "gain": (37.4, 40.1, 3.8), "pitch": (51.6, 46.1, 2.9),
                           "filters": (55.1, 47.7, 2.1), "ce": (98.9, 94.5, 2.5)}},
        "table2": {"autoencoder": (28.7, 12.3), "apnet_kmeans": (37.3, 18.2), "unsup": (34.5, 15.4)},
        "table3": {"direct": (97.8, 94.8), "apnet": (95.3, 91.3), "sup": (99.3, 95.8)},
    },
    "librispeech": {
        "table1": {"unsup": {"raw": (13.3, 13.2, 8.6), "gain": (44.4, 43.3, 3.4), "pitch": (46.8, 46.9, 2.6),
                             "filters": (48.8, 49.5, 1.6)},
                   "sup": {"raw": (60.5, 59.5, 8.6), "gain": (78.7, 79.1, 3.4), "pitch": (77.2, 77.8, 2.6),
                           "filters": (88.8, 89.4, 1.6), "ce": (99.9, 99.9, 1.9)}},
        "table2": {"autoencoder": (11.0, 11.1), "apnet_kmeans": (36.3, 36.4), "unsup": (48.6, 49.5)},
        "table3": {"direct": (99.4, 99.5), "apnet": (97.8, 97.8), "sup": (99.9, 99.9)},
    },
}
METHODS = {
    "autoencoder": "Autoencoder + K-means", "apnet_kmeans": "APNet + K-means (needs labels)",
    "unsup": "Ours without supervision", "direct": "Direct classification", "apnet": "APNet",
    "sup": "Ours with supervision",
    "vae": "Waveform VAE, bottleneck classifier", "vae_kmeans": "Waveform VAE + K-means (trained with labels)",
}


class CompareError(ValueError):
    """A run that failed or a missing config; reported as one line."""


def define_flags() -> None:
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
    flags.DEFINE_enum("paper", None, ["sol", "librispeech"], "Add the paper's numbers for this dataset.")
    flags.DEFINE_boolean("match_cpu_budget", True, "Give each baseline --cpu_budget = the CPU time of our run(s) "
                         "in its table (direct: sup; autoencoder: unsup; apnet, vae: the larger).")


# Which of our runs set each baseline's CPU budget: the runs it is compared with.
BUDGET_SOURCES = {"direct": ("sup",), "autoencoder": ("unsup",), "apnet": ("sup", "unsup"), "vae": ("sup", "unsup")}


def budget_flags(run: str, metrics: dict) -> list[str]:
    """--cpu_budget for a baseline from the CPU time of our runs already in `metrics` ([] if none)."""
    seconds = [metrics[source]["cpu_seconds"] for source in BUDGET_SOURCES.get(run, ())
               if metrics.get(source, {}).get("cpu_seconds")]
    return [f"--cpu_budget={math.ceil(max(seconds))}"] if seconds else []


def default_runs(data_dir: str) -> list[str]:
    """Every run; `vae` only on data prepared with --waveform (it reads nothing else)."""
    info_path = os.path.join(data_dir, "dataset_info.json")
    has_waveforms = False
    if os.path.isfile(info_path):
        with open(info_path, encoding="utf-8") as f:
            has_waveforms = bool(json.load(f).get("waveform"))
    return [run for run in RUNS if run != "vae" or has_waveforms]


def config_path(configs_dir: str, prefix: str, run: str) -> str:
    path = os.path.join(configs_dir, f"{prefix}_{run}.cfg")
    if not os.path.isfile(path):
        raise CompareError(f"no config {path} for run {run!r}")
    return path


def train_run(run: str, data_dir: str, out_dir: str, configs_dir: str, prefix: str, extra_flags=()) -> dict:
    """Train one run in a subprocess unless its metrics exist; return its metrics plus timing."""
    model_dir = os.path.join(out_dir, run)
    metrics_path, timing_path = os.path.join(model_dir, "metrics.json"), os.path.join(model_dir, RUN_FILENAME)
    if not os.path.isfile(metrics_path):
        command = [sys.executable, "-m", "amych_tf.train", f"--flagfile={config_path(configs_dir, prefix, run)}",
                   f"--data_dir={data_dir}", f"--model_dir={model_dir}", "--verbose=2", *extra_flags]
        print(f"[compare] training {run}: {' '.join(command[2:])}", flush=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.time()
        completed = subprocess.run(command)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if completed.returncode != 0:
            raise CompareError(f"training {run} failed (exit status {completed.returncode}); see its output above")
        os.makedirs(model_dir, exist_ok=True)
        with open(timing_path, "w", encoding="utf-8") as f:
            json.dump({"wall_seconds": round(time.time() - start, 1),
                       "cpu_seconds": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
                       "command": command[2:]}, f, indent=2)
    with open(metrics_path, encoding="utf-8") as f:
        metrics = json.load(f)
    if os.path.isfile(timing_path):
        with open(timing_path, encoding="utf-8") as f:
            metrics.update(json.load(f))
    return metrics


def _percent(value):
    return "—" if value is None else f"{100 * value:.1f}"


def _paper_cells(values, count):
    return [f"{v:.1f}" for v in values] if values else ["—"] * count


def _budget_cell(metrics) -> str:
    """What a run was allowed (metrics.json's "budget") and how many epochs it used."""
    budget = metrics.get("budget")
    if not budget:
        return "—"
    if budget.get("cpu_budget_seconds"):
        allowed = f"CPU >= {budget['cpu_budget_seconds']:.0f} s"
    elif budget.get("curriculum_patience") is not None:
        allowed = f"<= {budget['max_epochs']} epochs, patience {budget['curriculum_patience']}/stage"
    else:
        allowed = f"<= {budget['max_epochs']} epochs, patience {budget['patience']}"
    return f"{allowed}; {budget['epochs_run']} epochs run"


def _time_cells(metrics):
    cpu = metrics.get("cpu_seconds")
    return [f"{metrics.get('train_seconds', float('nan')):.0f}", "—" if cpu is None else f"{cpu:.0f}"]


def table1(rows_by_mode: dict, paper=None) -> tuple[str, list]:
    """Ablation by curriculum stage, both settings side by side (validation split)."""
    from amych_tf import report

    modes = [mode for mode in ("unsup", "sup") if mode in rows_by_mode]
    reached = {row["name"] for mode in modes for row in rows_by_mode[mode]}
    stages = [stage for stage in report.ROW_NAMES if stage in reached]  # curriculum order
    header = "| curriculum stage |" + "".join(
        f" {m} OA | {m} AA | {m} L_rec |" + (f" paper {m} OA | paper {m} AA | paper {m} L_rec |" if paper else "")
        for m in modes)
    lines = [header, "|---|" + "---|" * (len(modes) * (6 if paper else 3))]
    records = []
    for stage in stages:
        cells = [report.ROW_NAMES.get(stage, stage)]
        record = {"stage": stage}
        for mode in modes:
            row = next((r for r in rows_by_mode[mode] if r["name"] == stage), None)
            if row is None:
                cells += ["—"] * 3
            else:
                cells += [_percent(row["overall_accuracy"]), _percent(row["average_accuracy"]),
                          f"{REC_SCALE * row['rec_error']:.1f}"]
                record[mode] = {k: row[k] for k in ("overall_accuracy", "average_accuracy", "rec_error")}
            if paper:
                cells += _paper_cells(paper["table1"][mode].get(stage), 3)
        lines.append("| " + " | ".join(cells) + " |")
        records.append(record)
    return "\n".join(lines) + "\n", records


def method_table(entries: list, paper_key: str | None, paper=None) -> tuple[str, list]:
    """Tables 2 and 3: (method key, metrics with OA/AA, the run's metrics for size and time)."""
    header = "| method | OA (%) | AA (%) |" + (" paper OA | paper AA |" if paper else "") + \
        " parameters | budget | training time (s) | CPU time (s) |"
    lines = [header, "|---|---|---|" + ("---|---|" if paper else "") + "---|---|---|---|"]
    records = []
    for key, result, run_metrics in entries:
        cells = [METHODS[key], _percent(result["overall_accuracy"]), _percent(result["average_accuracy"])]
        if paper:
            cells += _paper_cells(paper[paper_key].get(key), 2)
        cells += [f"{run_metrics.get('num_parameters', 0):,}", _budget_cell(run_metrics), *_time_cells(run_metrics)]
        lines.append("| " + " | ".join(cells) + " |")
        records.append({"method": key, "overall_accuracy": result["overall_accuracy"],
                        "average_accuracy": result["average_accuracy"],
                        "num_parameters": run_metrics.get("num_parameters"), "budget": run_metrics.get("budget"),
                        "train_seconds": run_metrics.get("train_seconds"),
                        "cpu_seconds": run_metrics.get("cpu_seconds")})
    return "\n".join(lines) + "\n", records


def write_tables(out_dir: str, metrics: dict, data_dir: str, paper_name: str | None = None,
                 batch_size: int = 32) -> dict:
    """Tables 1-3 from the runs' metrics (and, for Table 1, their stage checkpoints)."""
    from amych_tf import report

    paper = PAPER.get(paper_name) if paper_name else None
    tables = {}
    rows_by_mode = {mode: report.table_rows(os.path.join(out_dir, mode), data_dir, "validation", batch_size)[0]
                    for mode in ("unsup", "sup") if mode in metrics}
    if rows_by_mode:
        tables["table1"] = table1(rows_by_mode, paper)
    clustering = [(key, result, metrics[run]) for key, run, result in [
        ("autoencoder", "autoencoder", metrics.get("autoencoder")),
        ("apnet_kmeans", "apnet", (metrics.get("apnet") or {}).get("clustering")),
        ("vae_kmeans", "vae", (metrics.get("vae") or {}).get("clustering")),
        ("unsup", "unsup", metrics.get("unsup"))] if result]
    if clustering:
        tables["table2"] = method_table(clustering, "table2", paper)
    classification = [(key, metrics[key], metrics[key]) for key in ("direct", "apnet", "vae", "sup") if key in metrics
                      and (key != "vae" or metrics[key].get("mode") == "supervised")]  # an unsupervised VAE only clusters
    if classification:
        tables["table3"] = method_table(classification, "table3", paper)
    titles = {"table1": "Table 1: ablation by curriculum stage (validation split; L_rec x 1000)",
              "table2": "Table 2: clustering (test split)", "table3": "Table 3: classification (test split)"}
    for name, (text, records) in tables.items():
        with open(os.path.join(out_dir, f"{name}.md"), "w", encoding="utf-8") as f:
            f.write(f"{titles[name]}\n\n{text}")
        with open(os.path.join(out_dir, f"{name}.json"), "w", encoding="utf-8") as f:
            json.dump({"title": titles[name], "rows": records, "data_dir": os.path.abspath(data_dir)}, f, indent=2)
    return {name: f"{titles[name]}\n\n{text}" for name, (text, _) in tables.items()}


def main(argv):
    del argv
    try:
        if not FLAGS.data_dir or not FLAGS.out_dir or not FLAGS.configs:
            raise CompareError("--data_dir, --out_dir and --configs are required")
        runs = FLAGS.runs or default_runs(FLAGS.data_dir)
        unknown = set(runs) - set(RUNS)
        if unknown:
            raise CompareError(f"unknown runs {sorted(unknown)}; choose from {list(RUNS)}")
        for run in runs:  # every config exists before the first hour of training
            config_path(FLAGS.configs_dir, FLAGS.configs, run)
        os.makedirs(FLAGS.out_dir, exist_ok=True)
        metrics = {}
        for run in [run for run in RUNS if run in runs]:  # ours first: they set the budgets
            extra = budget_flags(run, metrics) if FLAGS.match_cpu_budget else []
            metrics[run] = train_run(run, FLAGS.data_dir, FLAGS.out_dir, FLAGS.configs_dir, FLAGS.configs,
                                     [*extra, *FLAGS.train_flags])
    except CompareError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    for text in write_tables(FLAGS.out_dir, metrics, FLAGS.data_dir, FLAGS.paper).values():
        print(text)


def console_main():
    define_flags()
    app.run(main)


if __name__ == "__main__":
    console_main()
