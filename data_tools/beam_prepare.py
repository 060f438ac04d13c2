r"""Data preparation on Apache Beam: `data_tools.conversion`'s conversion, run by any Beam runner.

    python -m data_tools.prepare --layout=sol --audio_dir=SOL --out_dir=data/sol --runner=DirectRunner
    python -m data_tools.prepare ... --runner=DirectRunner --direct_num_workers=2 \
        --direct_running_mode=multi_processing
    python -m data_tools.prepare ... --runner=FlinkRunner --flink_master=HOST:8081 --environment_type=LOOPBACK

Needs the `beam` extra (`pip install -e ".[beam]"`). `data_tools.prepare` passes
every flag it does not define itself to Beam as a pipeline option.

The output is the local path's, byte for byte: the same shards, manifest.csv
and skipped.csv; dataset_info.json differs only in its `versions`, which also
name apache_beam. Like magenta/ddsp's prepare_tfrecord_lib (Create, Reshuffle,
then per-file work on the workers), the planned files are spread over the
workers after a Reshuffle. Unlike it, shards are not written by
`WriteToTFRecord`, whose shards hold whatever the runner bundled together:
here the n-th usable example of a split (in plan order) goes to shard
n // shard_size, exactly as `conversion.DatasetWriter` fills its shards.

Steps:
  1. in this process (the driver): check the arguments, discover and split the
     files (`conversion.plan_clips`), as the local path does;
  2. on the workers: decode each file (`data_tools.audio`) and compute its
     log-Mel with `conversion.ClipEncoder`, the same `amych_tf.spectral.log_mel`
     function as the local path; unusable files become skip reasons;
  3. the (index, split) of the usable files, gathered into one list, give each
     usable example its shard (a side input); each shard's examples are
     grouped, sorted by plan index and written to a staging directory inside
     `out_dir` (a temp name, then a rename, so a retried bundle leaves one
     whole file);
  4. the manifest rows and skip reasons are gathered into one JSON file in the
     staging directory;
  5. back in the driver, after the pipeline succeeded: the same checks and the
     same commit as the local path (`conversion.commit_dataset`): a run that
     fails or is killed leaves the earlier dataset whole or no
     dataset_info.json, never a partial dataset; the staging directory is
     deleted (or, after a kill, by the next run in `out_dir`).

Decisions:
  * `audio_dir` and `out_dir` are file paths that every worker must see at the
    same place: the local disk for the DirectRunner or a one-machine Flink or
    Spark, a shared mount (NFS, Filestore, a gcsfuse bucket) on a cluster.
    `gs://` paths are not handled: the local path's file handling, and with it
    the byte-identical output and the atomic renames, are kept as they are.
    Workers import amych_tf and data_tools: install the package on them (a
    worker container with it, or Dataflow's `--setup_file=./setup.py`).
  * LibriSpeech's speaker ranking reads the file headers in the driver, one
    file after the other: headers are small, and the ranking must be known
    before the plan is.
  * A shard's examples travel to one worker: shard_size (default 1000) x the
    clips' log-Mel size must fit in a worker's memory.
"""

from __future__ import annotations

import collections
import json
import os
import time
import uuid
from typing import Iterable, NamedTuple, Sequence

import apache_beam as beam
import tensorflow as tf
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState

from amych_tf import data
from amych_tf.spectral import FeatureConfig
from data_tools import audio, conversion

METADATA_FILENAME = "metadata.json"


class ClipResult(NamedTuple):
    """One planned file after step 2: an example and its manifest row, or a skip reason."""

    index: int  # position in the plan
    split: str
    example: bytes | None
    manifest_row: tuple | None
    skip_kind: str | None
    skip_reason: str | None


class ConvertClip(beam.DoFn):
    """(plan index, PlannedClip) -> ClipResult: decode, then the log-Mel of the local path."""

    def __init__(self, audio_dir: str, features: FeatureConfig, storage_dtype: str, waveform: dict | None):
        self._audio_dir = audio_dir
        self._features = features
        self._storage_dtype = storage_dtype
        self._waveform = waveform
        self._encode = None  # a tf.function: made on the worker, not pickled

    def setup(self):
        self._encode = conversion.ClipEncoder(self._features, self._storage_dtype, self._waveform)

    def process(self, element):
        index, clip = element
        min_samples = self._features.num_samples(data.MIN_FRAMES)
        outcome = audio.load_clip_or_reason(
            os.path.join(self._audio_dir, clip.path), self._features.sample_rate, min_samples
        )
        if isinstance(outcome, audio.UnusableAudio):
            yield ClipResult(index, clip.split, None, None, outcome.kind, str(outcome))
            return
        example, manifest_row = self._encode(clip, outcome)
        yield ClipResult(index, clip.split, example, manifest_row, None, None)


def staged_shard_name(split: str, shard: int) -> str:
    return f"{split}-{shard:05d}.tfrecord"


def assign_shards(usable: Iterable[tuple[int, str]], shard_size: int) -> dict[int, str]:
    """{plan index: staged shard name} for the usable files' (plan index, split): the n-th of a
    split in plan order goes to shard n // shard_size, as DatasetWriter.write does."""
    taken = collections.Counter()
    assignment = {}
    for index, split in sorted(usable):
        assignment[index] = staged_shard_name(split, taken[split] // shard_size)
        taken[split] += 1
    return assignment


class WriteShard(beam.DoFn):
    """(staged shard name, [(plan index, example)]) -> the shard file in the staging directory."""

    def __init__(self, staging_dir: str):
        self._staging_dir = staging_dir

    def process(self, element):
        name, indexed_examples = element
        path = os.path.join(self._staging_dir, name)
        # A unique temp name, then a rename: a bundle the runner retries, or runs twice
        # (speculative execution), rewrites the same bytes and leaves one whole file.
        temp = f"{path}.partial-{uuid.uuid4().hex}"
        with tf.io.TFRecordWriter(temp) as writer:
            for _, example in sorted(indexed_examples, key=lambda pair: pair[0]):
                writer.write(example)
        os.replace(temp, path)
        yield name


def _metadata_json(results: list[tuple]) -> str:
    return json.dumps(sorted(results))


def build_pipeline(
    pipeline: beam.Pipeline,
    plan: Sequence[conversion.PlannedClip],
    *,
    audio_dir: str,
    staging_dir: str,
    features: FeatureConfig,
    storage_dtype: str,
    shard_size: int,
    waveform: dict | None = None,
) -> None:
    """Steps 2-4 on `pipeline`: shards and METADATA_FILENAME in `staging_dir`."""
    results = (
        pipeline
        | "Plan" >> beam.Create(list(enumerate(plan)))
        | "Spread" >> beam.Reshuffle()
        | "Convert" >> beam.ParDo(ConvertClip(audio_dir, features, storage_dtype, waveform))
    )
    usable = results | "Usable" >> beam.Filter(lambda result: result.example is not None)
    assignment = (
        usable
        | "IndexAndSplit" >> beam.Map(lambda result: (result.index, result.split))
        | "AllUsable" >> beam.combiners.ToList()
        | "AssignShards" >> beam.Map(assign_shards, shard_size)
    )
    _ = (
        usable
        | "KeyByShard" >> beam.Map(
            lambda result, shards: (shards[result.index], (result.index, result.example)),
            shards=beam.pvalue.AsSingleton(assignment),
        )
        | "GroupShards" >> beam.GroupByKey()
        | "WriteShards" >> beam.ParDo(WriteShard(staging_dir))
    )
    _ = (
        results
        | "Metadata" >> beam.Map(
            lambda result: (result.index, result.manifest_row, result.skip_kind, result.skip_reason)
        )
        | "AllMetadata" >> beam.combiners.ToList()
        | "MetadataJson" >> beam.Map(_metadata_json)
        | "WriteMetadata" >> beam.io.WriteToText(
            os.path.join(staging_dir, METADATA_FILENAME), num_shards=1, shard_name_template=""
        )
    )


def _read_converted(staging_dir: str, plan: Sequence[conversion.PlannedClip], class_names) -> conversion.Converted:
    """The pipeline's metadata as `conversion.Converted`, manifest rows in plan order."""
    with open(os.path.join(staging_dir, METADATA_FILENAME), encoding="utf-8") as f:
        results = json.loads(f.read())
    if [result[0] for result in results] != list(range(len(plan))):
        raise conversion.PrepareError(f"the Beam pipeline reported {len(results)} results for {len(plan)} planned files")
    converted = conversion.Converted(class_names)
    for index, manifest_row, skip_kind, skip_reason in results:
        if manifest_row is None:
            converted.add_skipped(plan[index], skip_kind, skip_reason)
        else:
            converted.add_example(plan[index], tuple(manifest_row))
    return converted


def prepare_dataset_with_beam(
    audio_dir: str,
    out_dir: str,
    *,
    layout: str,
    features: FeatureConfig,
    num_classes: int | None = None,
    sol_classes: str = "paper",
    seed: int = 0,
    shard_size: int = conversion.DEFAULT_SHARD_SIZE,
    storage_dtype: str = "float32",
    waveform: dict[str, int] | None = None,
    pipeline_args: Sequence[str] = ("--runner=DirectRunner",),
) -> conversion.PrepareSummary:
    """`conversion.prepare_dataset` with the conversion run as a Beam pipeline.

    Args: those of `conversion.prepare_dataset` (less num_workers and
      show_progress: the runner has its own), and
      pipeline_args: Beam pipeline options as command-line flags, e.g.
        ["--runner=DirectRunner", "--direct_num_workers=2"].

    Raises: what `conversion.prepare_dataset` raises (nothing written), and
      the runner's error when the pipeline fails (nothing written either).
    """
    start = time.monotonic()
    conversion.check_arguments(
        audio_dir, out_dir, layout, num_classes, sol_classes, seed, 1, shard_size, storage_dtype
    )
    waveform = conversion.checked_waveform(waveform)
    options = PipelineOptions(list(pipeline_args))
    discovery, plan = conversion.plan_clips(audio_dir, layout, num_classes=num_classes, sol_classes=sol_classes, seed=seed)
    with conversion.dataset_writer(out_dir, shard_size) as writer:
        staging_dir = writer.staging_dir()
        pipeline = beam.Pipeline(options=options)
        build_pipeline(
            pipeline, plan, audio_dir=os.path.abspath(audio_dir), staging_dir=os.path.abspath(staging_dir),
            features=features, storage_dtype=storage_dtype, shard_size=shard_size, waveform=waveform,
        )
        state = pipeline.run().wait_until_finish()
        if state != PipelineState.DONE:
            raise conversion.PrepareError(f"the Beam pipeline ended in state {state}; nothing was written")
        converted = _read_converted(staging_dir, plan, discovery.class_names)
        conversion.check_usable(converted, len(plan))
        for split in data.SPLITS:
            count = sum(converted.class_counts[split].values())
            for shard in range(-(-count // shard_size)):
                path = os.path.join(staging_dir, staged_shard_name(split, shard))
                if not os.path.isfile(path):
                    raise conversion.PrepareError(f"the Beam pipeline did not write {path}")
                writer.add_staged_shard(split, path)
        return conversion.commit_dataset(
            writer, converted, discovery, plan, layout=layout, features=features, seed=seed,
            storage_dtype=storage_dtype, versions=conversion.library_versions() | {"apache_beam": beam.__version__},
            start=start, waveform=waveform,
        )
