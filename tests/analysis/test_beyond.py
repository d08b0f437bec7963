"""Beyond the paper (time_ray.analysis.beyond): OPCM, TSV-M and Iso-C are left out of the five findings and
compared seed by seed with Best-in-TIME and offline averaging, on the synthetic sweep with policies added whose
differences are known by construction."""

from pathlib import Path

import pandas as pd
import pytest

from time_ray.analysis.beyond import beyond_table, comparisons
from time_ray.analysis.findings import SUPPORTED, all_findings, finding_3, finding_4, is_beyond, paper_only
from time_ray.analysis.load import load_sweep
from time_ray.analysis.report import _beyond_blocks, render_markdown
from time_ray.analysis.tables import base_values, final_values


@pytest.fixture(scope="module")
def final(synthetic_sweep):
    sweep = load_sweep(synthetic_sweep[0])
    return final_values(sweep), base_values(sweep)


def added(frame: pd.DataFrame, init: str, deploy: str, technique: str, label: str, gm_shift, **costs) -> pd.DataFrame:
    """A copy of the (init, deploy, averaging) rows at 20 steps as another policy, its GM shifted per seed
    (``gm_shift``: seed -> shift) and A_KA up by 0.01."""
    src = frame[
        (frame.init == init)
        & (frame.deploy == deploy)
        & (frame.technique == "average")
        & (frame.settings == "")
        & (frame.budget == 20.0)
        & ~frame.multitask
    ].copy()
    assert len(src) == 3  # three seeds
    src["technique"], src["label"] = technique, label
    src["gm"] = src.gm + src.seed.map(gm_shift)
    src["a_ka"] = src.a_ka + 0.01
    for column, value in costs.items():
        src[column] = value
    return src


def with_beyond(frame):
    return pd.concat(
        [
            frame,
            added(
                frame,
                "ema",
                "ema",
                "tsv_m(alpha=1.0)",
                "ema/ema tsv_m(alpha=1.0)",
                {0: 0.05, 1: 0.05, 2: 0.05},
                merge_seconds=4.0,
                pool_bytes=2**21,
            ),
            added(frame, "zs", "all", "iso_c(alpha=1.0)", "zs/all iso_c(alpha=1.0)", {0: -0.02, 1: -0.03, 2: -0.01}),
            added(frame, "ema", "ema", "average", "opcm/opcm", {0: 0.3, 1: -0.2, 2: 0.0}).assign(
                init="opcm", deploy="opcm"
            ),
        ],
        ignore_index=True,
    )


def test_the_policies_beyond_the_paper_are_told_apart(final):
    frame = with_beyond(final[0])
    beyond = frame[is_beyond(frame)]
    assert sorted(beyond.label.unique()) == ["ema/ema tsv_m(alpha=1.0)", "opcm/opcm", "zs/all iso_c(alpha=1.0)"]
    assert len(paper_only(frame)) == len(final[0])  # the paper's policies and the multitask reference stay


def test_they_take_no_part_in_the_findings(final):
    frame, base = final
    # counted, a TSV-M chain 0.05 above averaging would be "the best other technique", and an OPCM chain
    # 0.3 above Best-in-TIME in one seed would be the best other pair of finding 4
    mixed = with_beyond(frame)
    assert [f.verdict for f in all_findings(mixed, base, 20.0)] == [f.verdict for f in all_findings(frame, base, 20.0)]
    assert all_findings(mixed, base, 20.0)[2].verdict == SUPPORTED
    assert "tsv_m" in " ".join(finding_3(mixed, 20.0).evidence)  # the plain functions would count it
    assert "opcm" in " ".join(finding_4(mixed, 20.0).evidence)


def test_each_is_compared_with_its_references_by_seed(final):
    frame = with_beyond(final[0])
    found = {(c.label, c.reference): c for c in comparisons(frame, 20.0, tasks=4)}
    assert set(found) == {
        ("ema/ema tsv_m(alpha=1.0)", "Best-in-TIME"),
        ("opcm/opcm", "Best-in-TIME"),
        ("zs/all iso_c(alpha=1.0)", "Best-in-TIME"),
        ("zs/all iso_c(alpha=1.0)", "offline averaging"),  # offline merges also against offline averaging
    }
    tsv = found[("ema/ema tsv_m(alpha=1.0)", "Best-in-TIME")]
    gm, a_ka, a_zs = (iv for _, iv in tsv.diffs)
    assert (gm.mean, gm.lo, gm.hi, gm.n) == pytest.approx((0.05, 0.05, 0.05, 3))  # the same shift every seed
    assert a_ka.mean == pytest.approx(0.01) and a_zs.mean == pytest.approx(0.0)
    assert tsv.reading == "beats Best-in-TIME"
    assert tsv.merge_seconds_per_step == pytest.approx(1.0) and tsv.pool_mib == pytest.approx(2.0)
    iso = found[("zs/all iso_c(alpha=1.0)", "offline averaging")]
    # -0.02, -0.03, -0.01: mean -0.02, sd 0.01, t(2) = 4.303 -> half-width 4.303 * 0.01 / sqrt(3) = 0.0248
    assert dict(iso.diffs)["gm"].mean == pytest.approx(-0.02)
    assert dict(iso.diffs)["gm"].hi == pytest.approx(-0.02 + 4.3027 * 0.01 / 3**0.5, abs=1e-4)
    assert iso.reading == "not separated from offline averaging"  # the interval reaches above 0
    assert found[("opcm/opcm", "Best-in-TIME")].reading == "not separated from Best-in-TIME"


def test_a_consistent_loss_reads_worse_and_one_seed_reads_nothing(final):
    frame = final[0]
    worse = pd.concat(
        [frame, added(frame, "ema", "ema", "iso_c(alpha=1.0)", "ema/ema iso_c", {0: -0.1, 1: -0.12, 2: -0.11})]
    )
    (c,) = comparisons(worse, 20.0, tasks=4)
    assert c.reading == "worse than Best-in-TIME"
    one = added(frame, "ema", "ema", "iso_c(alpha=1.0)", "ema/ema iso_c", {0: 0.5, 1: 0.5, 2: 0.5})
    (c,) = comparisons(pd.concat([frame, one[one.seed == 0]]), 20.0, tasks=4)
    assert c.reading == "no verdict (1 seed)"


def test_the_table_and_the_report_section(final, synthetic_report):
    table = beyond_table(comparisons(with_beyond(final[0]), 20.0, tasks=4))
    assert table.key == "beyond-the-paper" and len(table.rows) == 4
    assert list(table.data.columns[:5]) == ["policy", "reference", "steps_per_task", "seeds", "gm"]
    assert "beats Best-in-TIME" in table.markdown()
    blocks = _beyond_blocks(comparisons(with_beyond(final[0]), 20.0, tasks=4))
    assert blocks[0] == ("h2", "Beyond the paper") and blocks[-1] == table
    assert "## Beyond the paper" in render_markdown(blocks)
    # a sweep without such policies has no such section
    assert _beyond_blocks(comparisons(final[0], 20.0, tasks=4)) == []
    assert "Beyond the paper" not in Path(synthetic_report["markdown"]).read_text()


def test_finding_3_reports_its_secondary_ranges(final):
    frame = final[0]
    plain = finding_3(frame, 20.0)
    technique_range = plain.evidence[1].split(": ")[1].split(" ")[0]  # "GM range over 3 techniques at ema/ema: X (..."
    low_random = added(frame, "ema", "ema", "random(lambda=1.0, seed=0)", "ema/ema random", {0: -0.4, 1: -0.4, 2: -0.4})
    offline_ties = added(frame, "zs", "all", "ties(lambda=1.0)", "zs/all ties", {0: 0.01, 1: 0.02, 2: 0.03})
    f3 = finding_3(pd.concat([frame, low_random, offline_ties]), 20.0)
    lines = [e for e in f3.evidence if "secondary, no verdict" in e]
    assert len(lines) == 2
    # Random, far below every other technique, widens the range; without it the range is the plain sweep's
    assert lines[0].startswith(f"without Random: GM range over 3 techniques at ema/ema {technique_range};")
    assert lines[1].startswith("in offline merging (zs/all): GM range over 2 techniques 0.020;")  # mean of .01,.02,.03
    assert not [e for e in plain.evidence if "secondary" in e]  # nothing to add without them


def test_a_technique_missing_a_seed_is_left_out_of_finding_3_not_the_seed(final):
    frame = final[0]
    one_seed = added(frame, "ema", "ema", "task_arithmetic(lambda=1.0)", "ema/ema ta", {0: -0.5, 1: -0.5, 2: -0.5})
    one_seed = one_seed[one_seed.seed == 1]  # it diverged in seeds 0 and 2: no final value there
    f3 = finding_3(pd.concat([frame, one_seed]), 20.0)
    plain = finding_3(frame, 20.0)
    assert f3.verdict == plain.verdict == SUPPORTED
    assert f3.evidence[:4] == plain.evidence[:4]  # the ranges over the three seeds, as without it
    assert any(
        e.startswith("task_arithmetic(lambda=1.0) at ema/ema has no final value in seeds [0, 2]") for e in f3.evidence
    )
