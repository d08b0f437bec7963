"""Reading and writing what report tests compare: ``table_rows`` (a Markdown table's body) and ``plain``
(a small sweep config whose name, seeds, tasks, stream and model can be varied)."""


def table_rows(markdown: str, title: str) -> list[list[str]]:
    """The body rows of the Markdown table under ``### title``."""
    section = markdown.split(f"### {title}", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("| ")][1:]
    return [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines]


PLAIN = """\
# time-ray sweep {name}.yaml
name: {name}
{model}stream: {{tasks: {tasks}{stream}}}
budget: {{steps_per_task: 20, multipliers: [1.0]}}
policies:
  presets: [sequential-ft, offline-merge, best-in-time]
seeds: {seeds}
"""


def plain(name="plain", seeds="[0, 1]", tasks=3, stream="", model="") -> str:
    return PLAIN.format(name=name, seeds=seeds, tasks=tasks, stream=stream, model=model)
