"""What a researcher needs to reproduce a sweep's numbers image by image: the test split as a manifest
(``DIR/test_split.parquet``) and each trial's per-image predictions at its final timestep
(``trials/<id>/predictions.parquet``), joined on ``test_index``."""

from __future__ import annotations

import numpy as np
import pandas as pd

from time_ray.core.benchmark import Benchmark
from time_ray.core.images import ImageFiles

MANIFEST_FILE = "test_split.parquet"
PREDICTIONS_FILE = "predictions.parquet"
AUTO_LIMIT = 100_000  # outputs.predictions: auto writes them when the test split has at most this many images
MANIFEST_COLUMNS = ["test_index", "dataset", "role", "label", "class_name", "path", "caption"]
PREDICTION_COLUMNS = ["test_index", "predicted", "predicted_name", "correct"]


def manifest_frame(bench: Benchmark) -> pd.DataFrame:
    """One row per evaluated test image (``test_index``: its position in the test split, as every evaluation
    indexes them; the built-in benchmark's pretraining classes have test images that no evaluation uses,
    left out): its dataset and role ('adaptation', 'heldout' or 'retrieval'), its label (global class id
    and name), its file (real data; None for the built-in benchmark's generated images) and its caption
    (per-image, else the class caption)."""
    labels = bench.test_labels.numpy()
    datasets = [bench.class_dataset[c] for c in labels]
    roles = {name: ("retrieval" if d.kind == "retrieval" else d.role) for name, d in bench.datasets.items()}
    images = bench.test_images
    paths = [str(p) for p in images.paths] if isinstance(images, ImageFiles) else [None] * len(labels)
    captions = bench.test_captions or [bench.caption(int(c)) for c in labels]
    frame = pd.DataFrame(
        {
            "test_index": np.arange(len(labels)),
            "dataset": datasets,
            "role": [roles.get(d) for d in datasets],
            "label": labels,
            "class_name": [bench.class_names[c] for c in labels],
            "path": paths,
            "caption": list(captions),
        },
        columns=MANIFEST_COLUMNS,
    )
    return frame[frame.role.notna()].reset_index(drop=True)


def predictions_frame(predictions: dict) -> pd.DataFrame:
    """What ``Experiment.evaluate`` kept (``core.evaluate.evaluate_all``'s arrays plus the predicted classes'
    names), as a table: ``predicted`` -1 and no name for a retrieval image, whose ``correct`` is the
    image->text half of Recall@5."""
    predicted = np.asarray(predictions.get("predicted", np.zeros(0, np.int64)), dtype=np.int64)
    return pd.DataFrame(
        {
            "test_index": np.asarray(predictions.get("test_index", np.zeros(0, np.int64)), dtype=np.int64),
            "predicted": predicted,
            "predicted_name": list(predictions.get("predicted_name", [None] * len(predicted))),
            "correct": np.asarray(predictions.get("correct", np.zeros(0, bool)), dtype=bool),
        },
        columns=PREDICTION_COLUMNS,
    )


def predictions_wanted(setting: str, test_images: int) -> bool:
    """``outputs.predictions``: always, never, or auto (when the test split has at most ``AUTO_LIMIT`` images)."""
    return setting == "always" or (setting == "auto" and test_images <= AUTO_LIMIT)
