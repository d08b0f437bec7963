"""A small folders-layout benchmark (``make_folders``: three datasets of noisy solid-colour PNGs) and a
config that reads it (``config_text``)."""

import numpy as np
from PIL import Image

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "cyan": (0, 255, 255)}


def make_folders(root):
    rng = np.random.default_rng(0)
    for dataset, classes in (("shapes", ["red", "green"]), ("tones", ["blue", "cyan"]), ("known", ["red", "blue"])):
        for name in classes:
            folder = root / dataset / name
            folder.mkdir(parents=True)
            for i in range(6):
                pixels = np.clip(np.array(COLOURS[name]) + rng.normal(0, 20, (8, 8, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def config_text(root):
    return f"""
model: {{arch: tiny-clip, pretrained: none}}
stream:
  benchmark: folders
  tasks: 2
  data:
    datasets:
      - {{path: {root}/shapes, role: adaptation}}
      - {{path: {root}/tones, role: adaptation}}
      - {{path: {root}/known, role: heldout, template: "a {{}} thing."}}
training: {{batch_size: 8}}
budget: {{steps_per_task: 3}}
"""
