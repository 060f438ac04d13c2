"""Training throughput of amych_tf.train under MultiWorkerMirroredStrategy: 1 worker vs N workers.

    python benchmarks/multiworker_scaling.py --data_dir=/work/data/i15_demo_prepared \
        --out_dir=/tmp/scaling [--workers=1,2] [--per_worker_batch=32] [--epochs=8] [--pin_cores] \
        [--append_results]

For each worker count N, starts N `python -m amych_tf.train --flagfile=configs/demo.cfg`
processes on this host, each with its TF_CONFIG (localhost ports), exactly as README's
"Distributed training" tells (N = 1: the plain one-machine command, without TF_CONFIG),
with the per-worker batch fixed (global batch N x --per_worker_batch: weak scaling). The chief logs every batch to TensorBoard
(--log_freq=1); the step time is the median interval between consecutive batch events
after the first epoch (tracing) and away from epoch boundaries (callbacks, checkpoints).
The curriculum is held in its first stage (--patience beyond the run) and validation,
fidelity metrics and media run only at the end, so every timed step does the same work.

--pin_cores runs worker i on CPU core i (taskset), emulating one core per machine; without
it every worker may use every core. Workers on one host share memory bandwidth and talk
over loopback, so the figure is not what separate machines on a network give: it measures
the strategy's overhead, not network scaling.

Prints one JSON object: per worker count, s/step, total and per-worker examples/s, and the
efficiency against N x the one-worker rate; --append_results adds a row per worker count to
RESULTS-scaling.md with the load average before and after (the conditions).
"""

from __future__ import annotations

import contextlib
import datetime
import glob
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_PATH = os.path.join(REPO, "benchmarks", "RESULTS-scaling.md")
RESULTS_HEADER = (
    "# Multi-worker training throughput (benchmarks/multiworker_scaling.py)\n\n"
    "Weak scaling on one host: N `amych_tf.train` workers (MultiWorkerMirroredStrategy, localhost\n"
    "ports; N = 1 without TF_CONFIG), configs/demo.cfg on the demo data, 32 examples per worker and\n"
    "step, steady step after the first epoch. Workers on one host share its cores and memory\n"
    "bandwidth and talk over loopback: the strategy's overhead, not network scaling.\n\n"
    "| date | workers | cores | global batch | s/step | examples/s total | examples/s per worker "
    "| efficiency | load avg before / after | machine | TensorFlow |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
)
FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Prepared dataset (e.g. the demo's).", required=True)
flags.DEFINE_string("out_dir", None, "Where the runs' model_dirs go (replaced).", required=True)
flags.DEFINE_list("workers", ["1", "2"], "Worker counts to measure.")
flags.DEFINE_integer("per_worker_batch", 32, "Examples per worker and step.")
flags.DEFINE_integer("epochs", 8, "Epochs per run (the first is not timed).", lower_bound=3)
flags.DEFINE_string("config", os.path.join(REPO, "configs", "demo.cfg"), "Training flagfile.")
flags.DEFINE_boolean("pin_cores", False, "Run worker i on core i only.")
flags.DEFINE_boolean("append_results", False, f"Append the rows to {RESULTS_PATH}.")


def free_ports(count: int) -> list[int]:
    """`count` distinct ports that were free a moment ago (held together, so no two are equal)."""
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(socket.create_server(("127.0.0.1", 0))) for _ in range(count)]
        return [server.getsockname()[1] for server in servers]


def batch_times(log_dir: str) -> list[tuple[int, float]]:
    """(global batch index, wall time) of every `batch_loss` event under `log_dir`."""
    import tensorflow as tf

    events = {}
    for path in glob.glob(os.path.join(log_dir, "events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.tag == "batch_loss":
                    events[event.step] = event.wall_time
    return sorted(events.items())


def steady_step_seconds(times: list[tuple[int, float]], steps_per_epoch: int) -> tuple[float, int]:
    """Median interval between consecutive batches after the first epoch, leaving out the interval
    that crosses each epoch boundary; and how many intervals that is."""
    intervals = [
        later[1] - earlier[1]
        for earlier, later in zip(times, times[1:])
        if later[0] == earlier[0] + 1 and earlier[0] > steps_per_epoch and later[0] % steps_per_epoch != 1
    ]
    if len(intervals) < 5:
        raise RuntimeError(f"only {len(intervals)} steady intervals in the logs: raise --epochs")
    return statistics.median(intervals), len(intervals)


def run_workers(num_workers: int, model_dir: str) -> None:
    ports = free_ports(num_workers)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    args = [
        sys.executable, "-m", "amych_tf.train", f"--flagfile={FLAGS.config}", f"--data_dir={FLAGS.data_dir}",
        f"--model_dir={model_dir}", f"--batch_size={FLAGS.per_worker_batch * num_workers}",
        f"--epochs={FLAGS.epochs}", f"--patience={FLAGS.epochs + 1}", f"--validation_freq={FLAGS.epochs}",
        "--media_freq=0", "--fidelity_freq=0", "--log_freq=1", "--verbose=0",
    ]
    processes = []
    for index in range(num_workers):
        env = dict(os.environ)
        env.pop("TF_CONFIG", None)
        # One worker runs as on one machine, without TF_CONFIG: MultiWorkerMirroredStrategy with a
        # single worker fails (its reduced batch logs keep a leading axis of 1: NonFiniteGuard's
        # float(loss) raises), and the single-machine command is the baseline users have anyway.
        if num_workers > 1:
            env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        command = (["taskset", "-c", str(index)] if FLAGS.pin_cores else []) + args
        processes.append(subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
    outputs = [process.communicate() for process in processes]
    for index, (process, (_, stderr)) in enumerate(zip(processes, outputs)):
        if process.returncode != 0:
            raise RuntimeError(f"worker {index} of {num_workers} failed:\n{stderr[-3000:]}")


def append_results(results: dict, load_before: float, load_after: float, pin_cores: bool,
                   path: str = RESULTS_PATH) -> None:
    """One row per worker count in `path` (created with its header)."""
    import tensorflow as tf

    if not os.path.exists(path):
        with open(path, "w", encoding="utf-8") as f:
            f.write(RESULTS_HEADER)
    machine = f"{os.cpu_count()} CPU, {platform.machine()}"
    cores = "1 per worker (pinned)" if pin_cores else "all, shared"
    with open(path, "a", encoding="utf-8") as f:
        for num_workers, result in results.items():
            f.write(
                f"| {datetime.date.today()} | {num_workers} | {cores} | {result['global_batch']} "
                f"| {result['s_per_step']} | {result['examples_per_s_total']} "
                f"| {result['examples_per_s_per_worker']} | {result.get('efficiency', '')} "
                f"| {load_before:.1f} / {load_after:.1f} | {machine} | {tf.__version__} |\n"
            )


def main(argv) -> None:
    del argv
    from amych_tf import data

    info = data.DatasetInfo.load(FLAGS.data_dir)
    load_before = os.getloadavg()[0]
    results = {}
    for num_workers in map(int, FLAGS.workers):
        model_dir = os.path.join(FLAGS.out_dir, f"{num_workers}-workers")
        shutil.rmtree(model_dir, ignore_errors=True)
        run_workers(num_workers, model_dir)
        global_batch = FLAGS.per_worker_batch * num_workers
        steps_per_epoch = data.steps_per_epoch(info, "train", global_batch)
        seconds, intervals = steady_step_seconds(batch_times(os.path.join(model_dir, "logs", "train")), steps_per_epoch)
        results[num_workers] = {
            "global_batch": global_batch,
            "steps_per_epoch": steps_per_epoch,
            "timed_intervals": intervals,
            "s_per_step": round(seconds, 4),
            "examples_per_s_total": round(global_batch / seconds, 1),
            "examples_per_s_per_worker": round(global_batch / seconds / num_workers, 1),
        }
    if 1 in results:
        for num_workers, result in results.items():
            result["efficiency"] = round(
                result["examples_per_s_total"] / (num_workers * results[1]["examples_per_s_total"]), 3
            )
    load_after = os.getloadavg()[0]
    print(json.dumps({
        "data_dir": FLAGS.data_dir, "config": os.path.relpath(FLAGS.config, REPO), "epochs": FLAGS.epochs,
        "pin_cores": FLAGS.pin_cores, "cpu_count": os.cpu_count(), "load_average_before_after": [load_before, load_after],
        "workers": results,
    }, indent=2))
    if FLAGS.append_results:
        append_results(results, load_before, load_after, FLAGS.pin_cores)


if __name__ == "__main__":
    app.run(main)
