"""The quickstart reduced to a few CPU-minutes: ``--set`` overrides of configs/quickstart.yaml (2 tasks of 60
steps, a small built-in benchmark, a short base-model pretraining). The end-to-end tests run it, and so does
``benchmarks/sweep_efficiency.py --quick``; one definition, so that both run the same sweep."""

REDUCED = [
    "stream.tasks=2",
    "budget.steps_per_task=60",
    "training.batch_size=32",
    "stream.builtin={adaptation_datasets: 2, heldout_datasets: 2, classes_per_dataset: 5, "
    "pretrain_classes: 10, train_per_class: 20, test_per_class: 10}",
    "model.base_training={steps: 300, batch_size: 64, lr: 2.0e-3}",
]
