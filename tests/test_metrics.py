"""The paper's metrics on hand-made predictions (amych_tf.metrics)."""

import numpy as np

from amych_tf import metrics


def test_confusion_overall_and_average_accuracy():
    labels = np.array([0, 0, 0, 0, 1, 1, 2])
    predictions = np.array([0, 0, 0, 1, 1, 0, 2])
    confusion = metrics.confusion_matrix(labels, predictions, 4)
    np.testing.assert_array_equal(confusion, [[3, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
    assert metrics.overall_accuracy(labels, predictions) == 5 / 7
    per_class = metrics.per_class_accuracy(labels, predictions, 4)
    np.testing.assert_allclose(per_class[:3], [0.75, 0.5, 1.0])
    assert np.isnan(per_class[3])  # class 3 has no clip: left out of AA, not counted as 0
    assert metrics.average_accuracy(labels, predictions, 4) == (0.75 + 0.5 + 1.0) / 3


def test_unsupervised_mapping_with_an_unused_prototype():
    # Prototype 0 wins mostly class 1, prototype 1 wins class 0, prototype 2 wins nothing,
    # prototype 3 ties between classes 0 and 2 (the smaller class index wins).
    train_labels = np.array([1, 1, 0, 0, 0, 0, 2])
    train_winners = np.array([0, 0, 0, 1, 1, 3, 3])
    mapping = metrics.majority_mapping(train_labels, train_winners, 4)
    np.testing.assert_array_equal(mapping, [1, 0, -1, 0])

    test_labels = np.array([1, 0, 2, 0])
    test_winners = np.array([0, 1, 2, 3])  # the clip won by the unused prototype is an error
    summary = metrics.summarise(test_labels, test_winners, [0.1, 0.2, 0.3, 0.4], 3, mapping=mapping,
                                class_names=["a", "b", "c"])
    assert summary["overall_accuracy"] == 0.75
    assert summary["per_class_accuracy"] == {"a": 1.0, "b": 1.0, "c": 0.0}
    assert summary["average_accuracy"] == 2 / 3
    assert summary["unused_prototypes"] == [2]
    assert summary["prototype_classes"] == [1, 0, -1, 0]
    assert summary["rec_error"] == np.mean([0.1, 0.2, 0.3, 0.4])
    assert summary["confusion_matrix"] == [[2, 0, 0], [0, 1, 0], [0, 0, 0]]  # unmapped clip not counted
