"""The pure core: merging, strategies, data, models, finetuning, evaluation, metrics. No Ray here."""
