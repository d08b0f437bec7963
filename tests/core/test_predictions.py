"""Per-image predictions and the test-split manifest (time_ray/core/predictions.py) against the records
the evaluation gives (time_ray/core/evaluate.py)."""

import numpy as np
import pandas as pd
import pytest
import torch

from time_ray.core.base_model import BaseTraining, builtin_base
from time_ray.core.benchmark import BenchmarkSpec
from time_ray.core.contracts import ExperimentSettings
from time_ray.core.experiment import Experiment
from time_ray.core.predictions import AUTO_LIMIT, manifest_frame, predictions_frame, predictions_wanted

SPEC = BenchmarkSpec(
    adaptation_datasets=2,
    heldout_datasets=2,
    retrieval_datasets=1,
    classes_per_dataset=3,
    pretrain_classes=2,
    train_per_class=4,
    test_per_class=3,
)


def test_predictions_joined_with_the_manifest_give_every_accuracy_record(cache_dir):
    experiment = Experiment.from_settings(ExperimentSettings(arch="tiny-clip", tasks=2, benchmark=SPEC))
    base, _ = builtin_base("tiny-clip", SPEC, BaseTraining(steps=5, batch_size=8))
    kept: dict = {}
    records = experiment.evaluate(experiment.new_model(base), predictions=kept)
    split, predictions = manifest_frame(experiment.bench), predictions_frame(kept)
    assert len(experiment.bench.test_labels) == (4 * 3 + 2) * 3  # the pretraining classes' are never evaluated
    assert len(split) == 4 * 3 * 3 and split.test_index.is_unique
    assert split.role.value_counts().to_dict() == {"adaptation": 18, "heldout": 9, "retrieval": 9}
    joined = predictions.merge(split, on="test_index", validate="one_to_one")
    assert len(joined) == len(split)
    for record in records:
        if record["metric"] == "accuracy" and record["role"] != "task":
            mine = joined[joined.dataset == record["dataset"]]
            assert mine.correct.mean() == pytest.approx(record["value"], abs=1e-6) and len(mine) == record["n_eval"]
            assert (mine.correct == (mine.predicted == mine.label)).all()
            assert mine.predicted.isin(experiment.bench.datasets[record["dataset"]].classes).all()
    retrieval = joined[joined.role == "retrieval"]
    assert (retrieval.predicted == -1).all() and retrieval.predicted_name.isna().all()
    names = experiment.bench.class_names
    classified = joined[joined.role != "retrieval"]
    assert list(classified.predicted_name) == [names[p] for p in classified.predicted]


def test_no_predictions_are_kept_unless_asked(cache_dir):
    experiment = Experiment.from_settings(ExperimentSettings(arch="tiny-clip", tasks=2, benchmark=SPEC))
    model = experiment.new_model()
    torch.manual_seed(0)
    assert experiment.evaluate(model) == experiment.evaluate(model, predictions={})


def test_the_auto_setting_writes_predictions_up_to_a_limit():
    assert predictions_wanted("auto", AUTO_LIMIT) and not predictions_wanted("auto", AUTO_LIMIT + 1)
    assert predictions_wanted("always", 10**9) and not predictions_wanted("never", 1)
    empty = predictions_frame({})
    assert list(empty.columns) == ["test_index", "predicted", "predicted_name", "correct"] and empty.empty
    assert isinstance(empty, pd.DataFrame) and np.issubdtype(empty.test_index.dtype, np.integer)
