"""The repository explains itself (docs/architecture.md): every file, doc and section a text names is in the
repository; nothing points at documents outside it or at a tracker's numbers; the README stays a user's
page; the pure core never imports Ray; no test module imports another (what tests share is in tests/helpers/)."""

import ast
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT = (".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".cfg", ".json", "Makefile", "Dockerfile", "run")
# a path in the repository as texts write it: a top-level folder of ours, then a file name
PATH = re.compile(r"(?<![\w/.-])((?:docs|configs|benchmarks|time_ray|tests|cluster|analysis)/[\w./-]*\w)")
SECTION = re.compile(r"docs/method\.md`?,? ?§ ?(\d+)")
HEADING = re.compile(r'(docs/[\w-]+\.md|README)`?,? "([^"]+)"')
OUTSIDE = re.compile(r"\b(TIME\.md|ARCHITECTURE\.md|DEVELOPERS\.md)|\.\./shared/")
TRACKER = re.compile(r"\b[Ii]ssues? #?\d+\b|\(now\)")


@cache
def tracked() -> tuple[Path, ...]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    files = [
        ROOT / line for line in out.splitlines() if line.endswith(TEXT) and not line.startswith("analysis/reports")
    ]
    return tuple(f for f in files if f.is_file() and f != Path(__file__))


def texts():
    for path in tracked():
        yield path.relative_to(ROOT), path.read_text(encoding="utf-8", errors="replace")


def exists(name: str) -> bool:
    name = name.rstrip(".")
    if any(c in name for c in "<>{}*$") or any(w in name for w in ("DIR", "no-such", "does-not-exist", "__pycache__")):
        return True  # a pattern, a placeholder or a name a test makes up, not a file of the repository
    return (ROOT / name).exists() or (ROOT / name).with_suffix("").exists() or bool(list(ROOT.glob(name + ".*")))


def test_every_file_a_text_names_is_in_the_repository():
    missing = [f"{path}: {name}" for path, text in texts() for name in PATH.findall(text) if not exists(name)]
    assert not missing, "\n".join(missing)


def test_nothing_points_outside_the_repository_or_at_a_tracker():
    found = [
        f"{path}:{n}: {line.strip()}"
        for path, text in texts()
        for n, line in enumerate(text.splitlines(), 1)
        if OUTSIDE.search(line) or TRACKER.search(line)
    ]
    assert not found, "\n".join(found)


def test_cited_sections_and_headings_exist():
    method = (ROOT / "docs/method.md").read_text()
    sections = set(re.findall(r"^## (\d+)\. ", method, re.M))
    bad = []
    for path, text in texts():
        bad += [f"{path}: docs/method.md §{n}" for n in SECTION.findall(text) if n not in sections]
        for doc, heading in HEADING.findall(text):
            doc = "README.md" if doc == "README" else doc
            if not (ROOT / doc).exists() or f"# {heading}" not in (ROOT / doc).read_text():
                bad.append(f'{path}: {doc} "{heading}"')
    assert sections >= {"1", "2", "3", "4", "5", "6", "7"} and not bad, "\n".join(bad)


def test_the_checks_above_would_fail_on_what_they_look_for():
    outside, tracker = "the spec (" + "TIME" + ".md §5)", "fixed in " + "issue" + " 15"  # split: not hits here
    assert OUTSIDE.search(outside) and TRACKER.search(tracker)
    assert not exists("docs/missing-page.md") and exists("docs/method.md") and exists("trials/<id>/x.parquet")
    assert SECTION.findall("see docs/method.md §5 and `docs/method.md` §6") == ["5", "6"]
    assert HEADING.findall('docs/architecture.md "Ray facts"') == [("docs/architecture.md", "Ray facts")]
    assert HEADING.findall('(README, "Output")') == [("README", "Output")]


def test_the_readme_is_a_users_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for doc in ("method", "architecture", "performance", "config", "data", "output", "failures", "cluster"):
        assert f"docs/{doc}.md" in readme, doc


@pytest.mark.parametrize("package", ["time_ray.core"])
def test_the_core_imports_no_ray(package):
    code = (
        "import importlib, pkgutil, sys, {p}; "
        "[importlib.import_module(m.name) for m in pkgutil.walk_packages({p}.__path__, '{p}.')]; "
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))"
    ).format(p=package)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def foreign_test_imports(source: str, module: str) -> list[str]:
    """The imports in ``source`` (the module ``module``, e.g. ``tests.core.test_x``) of a module under
    ``tests`` other than the package ``tests.helpers``, relative imports resolved, as ``line: name``."""
    package = module.rsplit(".", 1)[0] if not module.endswith(".__init__") else module.removesuffix(".__init__")
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            # ``from tests.x import y`` may import the module tests.x.y: name both, either may be a test module
            names = [base] if base != "tests" else [f"tests.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            inside = name == "tests" or name.startswith("tests.")
            if inside and name != "tests.helpers" and not name.startswith("tests.helpers."):
                found.append(f"{node.lineno}: {name}")
    return found


def test_no_test_module_imports_another():
    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        offenders += [f"{path.relative_to(ROOT)}:{hit}" for hit in foreign_test_imports(path.read_text(), module)]
    assert not offenders, "test modules import from one another (move what they share to tests/helpers/):\n" + (
        "\n".join(offenders)
    )


def test_the_import_check_would_fail_on_an_import_of_a_test_module():
    source = """
import tests.test_cli
from tests.core.test_real_data import write_fomo
from tests import test_bad_inputs
from .test_report import table_rows
from . import synthetic
from tests.helpers.real_data import png
from tests.helpers import e2e
import tests.helpers.cli
import time_ray.tests_like
def f():
    from tests.analysis.test_report import table_rows
"""
    assert foreign_test_imports(source, "tests.analysis.test_x") == [
        "2: tests.test_cli",
        "3: tests.core.test_real_data",
        "4: tests.test_bad_inputs",
        "5: tests.analysis.test_report",
        "6: tests.analysis",
        "12: tests.analysis.test_report",
    ]
