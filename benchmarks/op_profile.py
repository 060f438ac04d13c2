"""Where a traced run's CPU time goes: op self-times from a tf.profiler trace.

    python benchmarks/train_throughput.py --steps=3 --profile_dir=/tmp/profile
    python benchmarks/op_profile.py /tmp/profile [--top=30] [--steps=3]

Reads the newest `*.xplane.pb` under the directory (what `tf.profiler.experimental`
writes, and TensorBoard's profile tab shows) with TensorFlow's own XPlane protocol
buffer, so nothing beyond TensorFlow is needed. For every event on the host's threads
the self time is its duration minus that of the events nested in it on the same
thread; events are grouped by op type (TensorFlow's executor names an op event
`name:Type`) or, for the compiled kernels and oneDNN's primitives that have no type,
by name. Times are summed over threads, so they are CPU time, and divided by --steps.
Only TensorFlow's own threads (`tf_*`) count: the Python thread's events wait for them.
"""

from __future__ import annotations

import collections
import glob
import os

from absl import app, flags
from tensorflow.tsl.profiler.protobuf import xplane_pb2

FLAGS = flags.FLAGS
flags.DEFINE_integer("top", 30, "Rows to print.")
flags.DEFINE_integer("steps", 1, "Steps the trace holds: times are divided by it.")


def newest_xspace(directory: str) -> str:
    paths = glob.glob(os.path.join(directory, "**", "*.xplane.pb"), recursive=True)
    if not paths:
        raise FileNotFoundError(f"no *.xplane.pb under {directory}: run a benchmark with --profile_dir first")
    return max(paths, key=os.path.getmtime)


def op_key(name: str) -> str:
    """`encoder/conv/Conv2D:Conv2D` -> `Conv2D`; other names (`ThunkExecutor::Execute`, XLA's fusions) stay whole.

    `#...` arguments are dropped.
    """
    name = name.split("#", 1)[0]
    if "::" not in name and ":" in name:
        return name.rsplit(":", 1)[1]
    return name


def self_times(xspace: xplane_pb2.XSpace) -> collections.Counter:
    """Self time in picoseconds per op key, summed over the host plane's threads."""
    totals = collections.Counter()
    for plane in xspace.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        names = {key: metadata.name for key, metadata in plane.event_metadata.items()}
        # TensorFlow's threads (tf_Compute, the Eigen pool, tf.data's) run the work; the Python
        # thread's events only wait for them.
        for line in (line for line in plane.lines if line.name.startswith("tf_")):
            events = sorted(((e.offset_ps, e.duration_ps, names.get(e.metadata_id, "?")) for e in line.events),
                            key=lambda event: (event[0], -event[1]))
            stack = []  # [end, key, self time] of the open events
            for start, duration, name in events:
                while stack and stack[-1][0] <= start:
                    _, key, own = stack.pop()
                    totals[key] += own
                if stack:
                    stack[-1][2] -= duration
                stack.append([start + duration, op_key(name), duration])
            for _, key, own in stack:
                totals[key] += own
    return totals


def main(argv):
    if len(argv) != 2:
        raise app.UsageError("usage: op_profile.py PROFILE_DIR")
    path = newest_xspace(argv[1])
    xspace = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        xspace.ParseFromString(f.read())
    totals = self_times(xspace)
    whole = sum(totals.values())
    print(f"{path}\nself CPU time per step, by op: {whole / 1e9 / FLAGS.steps:.1f} ms in all")
    for key, picoseconds in totals.most_common(FLAGS.top):
        print(f"{picoseconds / 1e9 / FLAGS.steps:10.1f} ms {100 * picoseconds / whole:5.1f}%  {key}")


if __name__ == "__main__":
    app.run(main)
