"""compare: the paper's three tables from tiny runs of our model and the baselines."""

import json
import os
import subprocess
import sys

import pytest
from absl import flags
from absl.testing import flagsaver

from helpers import class_coded_log_mel, make_prepared_dir

from amych_tf import comparison
from amych_tf.cli import train
from amych_tf.training import trainer

FLAGS = flags.FLAGS
train.define_flags()
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_MELS, NUM_CLASSES = 32, 3
TINY = {  # per run: flags of a seconds-long training
    "sup": ["--mode=supervised", "--epochs=3", "--beta_init=1.0"],
    "unsup": ["--mode=unsupervised", "--epochs=3"],
    "direct": ["--model=direct", "--epochs=2"],
    "autoencoder": ["--model=autoencoder", "--epochs=2"],
    "apnet": ["--model=apnet", "--epochs=2"],
}
COMMON = ["--batch_size=8", "--eval_batch_size=8", "--train_frames=32", "--patience=1", "--warmup_steps=2",
          "--learning_rate=1e-3", "--media_freq=0", "--init_examples=24", "--seed=0"]


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """A tiny dataset, a configs dir with one config per run, and every run but `direct` trained in-process."""
    root = tmp_path_factory.mktemp("compare")
    data_dir, configs_dir, out_dir = root / "data", root / "configs", root / "out"
    make_prepared_dir(data_dir, {"train": [40 + i % 7 for i in range(24)], "validation": [20, 36, 50],
                                 "test": [33, 17, 48, 60, 25, 40]},
                      num_mels=NUM_MELS, num_classes=NUM_CLASSES, spectrogram=class_coded_log_mel)
    os.makedirs(configs_dir)
    for run, run_flags in TINY.items():
        (configs_dir / f"tiny_{run}.cfg").write_text("\n".join(run_flags + COMMON) + "\n")
    for run in ("sup", "unsup", "autoencoder", "apnet"):
        FLAGS.unparse_flags()
        FLAGS(["train", f"--flagfile={configs_dir / f'tiny_{run}.cfg'}", f"--data_dir={data_dir}",
               f"--model_dir={out_dir / run}", "--verbose=0"])
        with flagsaver.flagsaver():
            config = train.config_from_flags()
            trainer.train(config, trainer.check(config))
    FLAGS.unparse_flags()
    return str(data_dir), str(configs_dir), str(out_dir)


@pytest.mark.slow
def test_compare_trains_missing_runs_and_writes_the_three_tables(tiny_runs):
    data_dir, configs_dir, out_dir = tiny_runs
    completed = subprocess.run(
        [sys.executable, "-m", "amych_tf.compare", f"--data_dir={data_dir}", f"--out_dir={out_dir}",
         "--configs=tiny", f"--configs_dir={configs_dir}", "--paper=sol"],
        capture_output=True, text=True, cwd=REPO, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    # Only `direct` was missing: compare trained it (and timed it), and collected the others.
    assert "[compare] training direct" in completed.stdout
    assert "[compare] training sup" not in completed.stdout
    with open(os.path.join(out_dir, "direct", comparison.RUN_FILENAME)) as f:
        timing = json.load(f)
    assert timing["cpu_seconds"] > 0 and timing["wall_seconds"] > 0

    tables = {}
    for name in ("table1", "table2", "table3"):
        with open(os.path.join(out_dir, f"{name}.json")) as f:
            tables[name] = json.load(f)
        assert os.path.getsize(os.path.join(out_dir, f"{name}.md")) > 100
    assert [row["method"] for row in tables["table2"]["rows"]] == ["autoencoder", "apnet_kmeans", "unsup"]
    assert [row["method"] for row in tables["table3"]["rows"]] == ["direct", "apnet", "sup"]
    for row in tables["table2"]["rows"] + tables["table3"]["rows"]:
        assert 0.0 <= row["overall_accuracy"] <= 1.0 and row["num_parameters"] > 0, row
    # The tables carry each run's own numbers.
    with open(os.path.join(out_dir, "sup", "metrics.json")) as f:
        sup = json.load(f)
    assert tables["table3"]["rows"][2]["overall_accuracy"] == sup["overall_accuracy"]
    assert tables["table3"]["rows"][2]["num_parameters"] == sup["num_parameters"]
    with open(os.path.join(out_dir, "apnet", "metrics.json")) as f:
        assert tables["table2"]["rows"][1]["overall_accuracy"] == json.load(f)["clustering"]["overall_accuracy"]
    # Table 1: one row per stage checkpoint, starting with the raw prototypes, both settings.
    assert tables["table1"]["rows"][0]["stage"] == "raw"
    assert {"sup", "unsup"} <= set(tables["table1"]["rows"][0])
    assert "paper sup OA" in open(os.path.join(out_dir, "table1.md")).read()


def test_compare_refuses_missing_configs_before_training(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "amych_tf.compare", f"--data_dir={tmp_path}", f"--out_dir={tmp_path}/out",
         "--configs=none", f"--configs_dir={tmp_path}"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert completed.returncode == 2 and "no config" in completed.stderr
    assert not os.path.exists(tmp_path / "out")


def test_baselines_get_the_cpu_time_of_our_runs_in_their_table_as_budget():
    metrics = {"sup": {"cpu_seconds": 100.2}, "unsup": {"cpu_seconds": 250.0}}
    assert comparison.budget_flags("direct", metrics) == ["--cpu_budget=101"]
    assert comparison.budget_flags("autoencoder", metrics) == ["--cpu_budget=250"]
    assert comparison.budget_flags("apnet", metrics) == ["--cpu_budget=250"]
    assert comparison.budget_flags("apnet", {"sup": {"cpu_seconds": 100.2}}) == ["--cpu_budget=101"]
    assert comparison.budget_flags("direct", {}) == [] and comparison.budget_flags("sup", metrics) == []
    assert comparison._budget_cell({"budget": {"cpu_budget_seconds": 250, "epochs_run": 31, "max_epochs": 200}}) == \
        "CPU >= 250 s; 31 epochs run"
    assert comparison._budget_cell({"budget": {"curriculum_patience": 1, "epochs_run": 40, "max_epochs": 40}}) == \
        "<= 40 epochs, patience 1/stage; 40 epochs run"
