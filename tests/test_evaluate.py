"""evaluate's inference loop: one trace per model, new weights seen without a retrace."""

import gc
import weakref

import numpy as np

from amych_tf import data, evaluation
from helpers import FEATURES, make_prepared_dir, write_model_dir


def test_rec_errors_follow_loaded_weights_without_retracing_and_free_the_model(tmp_path):
    # Two batch lengths (16 and 24 frames): one shape-generic trace serves both.
    lengths = {"train": [16, 16, 24, 24], "validation": [], "test": []}
    make_prepared_dir(tmp_path / "data", lengths, num_mels=FEATURES.n_mels, sample_rate=FEATURES.sample_rate,
                      n_fft=FEATURES.n_fft, hop_length=FEATURES.hop_length)
    info = data.load_dataset_info(str(tmp_path / "data"))
    split = data.evaluation_dataset(str(tmp_path / "data"), "train", batch_size=2, info=info)
    model = write_model_dir(str(tmp_path / "run"))

    before, labels = evaluation.collect_rec_errors(model, split)
    # The prototypes' pitch table once per pass, then the batches from it.
    table_function = evaluation._TRACED[model]["pitch_table"]
    function = evaluation._TRACED[model]["rec_errors_from_table"]
    traces = function.experimental_get_tracing_count()
    assert traces <= 2 and table_function.experimental_get_tracing_count() == 1

    # Report and compare load one checkpoint after another into the same model.
    model.prototypes.assign(model.prototypes.numpy() + 0.25)
    after, _ = evaluation.collect_rec_errors(model, split)
    assert function.experimental_get_tracing_count() == traces
    assert table_function.experimental_get_tracing_count() == 1
    assert not np.allclose(before, after)
    expected = np.concatenate([model(features, training=False)["rec_errors"].numpy() for features, _ in split])
    np.testing.assert_allclose(after, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(labels, np.arange(4) % 3)

    reference = weakref.ref(model)
    del model, function, table_function
    gc.collect()
    assert reference() is None, "the cache of traced functions keeps the model alive"
