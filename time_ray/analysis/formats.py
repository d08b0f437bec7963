"""What ``time-ray report --format`` writes, and the summary tables as CSV and LaTeX files.

Formats (any comma-separated subset; default ``html,md``, the report as it always was):
  html   report.html, self-contained (figures embedded)
  md     summary.md, linking the figures (PNG files beside it)
  csv    tables/<name>.csv: one file per summary table, numbers as numbers (means and standard
         deviations in separate columns), for pandas or a spreadsheet
  latex  tables/<name>.tex: one booktabs ``tabular`` per summary table (the cells as the report
         prints them, LaTeX special characters escaped), to ``\\input`` into a paper's ``table``
The figures (PNG) are drawn only for html or md. The LaTeX writer is our own (pandas' Styler.to_latex
needs jinja2, which time-ray does not depend on).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from time_ray.analysis.load import ReportError
from time_ray.analysis.tables import Table

logger = logging.getLogger(__name__)

FORMATS = ("html", "md", "csv", "latex")
DEFAULT_FORMATS = ("html", "md")
ALIASES = {"markdown": "md", "tex": "latex"}
TABLES_DIR = "tables"
_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    ">=": r"$\geq$",
    "<=": r"$\leq$",
    "->": r"$\rightarrow$",
    ">": r"\textgreater{}",  # in text mode <, > and | print as other glyphs in LaTeX's default font encoding
    "<": r"\textless{}",
    "|": r"\textbar{}",
}
_LATEX_PATTERN = re.compile("|".join(re.escape(c) for c in sorted(_LATEX_SPECIAL, key=len, reverse=True)))
WIDE_CELL = 40  # characters: a column with a longer cell is set as a paragraph column


def parse_formats(text: str | None) -> tuple[str, ...]:
    """``"html,csv"`` -> ("html", "csv"), in FORMATS order; None or '' -> DEFAULT_FORMATS. An unknown
    name is a ReportError that lists the known ones."""
    if not text:
        return DEFAULT_FORMATS
    names = [ALIASES.get(w.strip().lower(), w.strip().lower()) for w in text.split(",") if w.strip()]
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise ReportError(
            f"--format {text!r}: {', '.join(map(repr, unknown)) or 'no format'} is not a report format; "
            f"give a comma-separated list of {', '.join(FORMATS)} (default: {','.join(DEFAULT_FORMATS)})."
        )
    return tuple(f for f in FORMATS if f in names)


def latex_escape(text: object) -> str:
    """``theta_0 50%`` -> ``theta\\_0 50\\%``: text safe in a LaTeX cell."""
    return _LATEX_PATTERN.sub(lambda m: _LATEX_SPECIAL[m.group(0)], str(text))


def _column_spec(table: Table) -> str:
    """l for the first column and for text, r for numbers, a paragraph column for long text."""
    specs = []
    for i in range(len(table.columns)):
        cells = [str(r[i]) for r in table.rows]
        if any(len(c) > WIDE_CELL for c in cells):
            specs.append(r"p{0.45\linewidth}" if i else r"p{0.3\linewidth}")
        elif i == 0 or not all(_numeric(c) for c in cells if c not in ("", "-")):
            specs.append("l")
        else:
            specs.append("r")
    return "".join(specs)


def _numeric(cell: str) -> bool:
    """'0.812 ± 0.004', '1,234', '+0.05 [95% CI ...]', '12.5%': a cell that reads as a number."""
    head = cell.split(" ")[0].replace(",", "").rstrip("%")
    try:
        float(head)
    except ValueError:
        return False
    return True


def latex_table(table: Table) -> str:
    """The table as a booktabs ``tabular`` (needs ``\\usepackage{booktabs}``), its title and note as
    comments above it; an empty table gets one row that says so."""
    lines = [f"% {latex_escape(table.title)}", "% written by time-ray report"]
    if table.note:
        lines.append(f"% {' '.join(table.note.split())}")
    lines += [rf"\begin{{tabular}}{{{_column_spec(table)}}}", r"\toprule"]
    lines.append(" & ".join(latex_escape(c) for c in table.columns) + r" \\")
    lines.append(r"\midrule")
    for row in table.rows:
        lines.append(" & ".join(latex_escape(c) for c in row) + r" \\")
    if not table.rows:
        lines.append(rf"\multicolumn{{{len(table.columns)}}}{{l}}{{{latex_escape(table.note or 'no rows')}}} \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def table_frame(table: Table) -> pd.DataFrame:
    """The table's numbers (``Table.data``), else its cells as text."""
    if table.data is not None:
        return table.data
    return pd.DataFrame(table.rows, columns=table.columns)


def _clear(folder: Path, suffix: str) -> None:
    """Removes the files of an earlier report (a companion not given this time leaves none behind)."""
    for old in folder.glob(f"*{suffix}"):
        old.unlink()


def write_tables(tables: list[Table], out: Path, formats: tuple[str, ...]) -> list[Path]:
    """Writes every table with a ``key`` as out/tables/<key>.csv and/or .tex; returns the paths."""
    wanted = [s for f, s in (("csv", ".csv"), ("latex", ".tex")) if f in formats]
    if not wanted:
        return []
    folder = out / TABLES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix in wanted:
        _clear(folder, suffix)
        for table in tables:
            path = folder / f"{table.key}{suffix}"
            if suffix == ".csv":
                table_frame(table).to_csv(path, index=False, float_format="%.10g")  # 0.1, not 0.09999999999999996
            else:
                path.write_text(latex_table(table))
            written.append(path)
    logger.debug("time-ray: report: %d table files in %s", len(written), folder)
    return written
