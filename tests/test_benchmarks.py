"""Smoke tests of benchmarks/: each benchmark runs with --quick and prints one JSON line with its fields,
then one OK/MISS line per target; the merge benchmark's exactness checks pass. No timing is asserted:
speed targets are what the benchmarks print, on the machine they run on."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TECHNIQUES = ["average", "task_arithmetic", "ties", "dare_ties", "breadcrumbs_ties", "magmax"]


def run_quick(script: str) -> tuple[dict, list[str]]:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    first, *rest = proc.stdout.strip().splitlines()
    results = json.loads(first)
    verdicts = [line for line in rest if line.endswith((" OK", " MISS"))]
    assert verdicts and "(target " in verdicts[-1]
    assert results["targets"] == len(verdicts) and results["targets_held"] == sum(v.endswith(" OK") for v in verdicts)
    assert results["machine"]["cpus"] >= 1 and "load_1min_at_start" in results["machine"]
    return results, rest


def test_merge_throughput_quick_measures_every_technique_and_is_exact():
    results, lines = run_quick("merge_throughput.py")
    assert results["ks"] == [2, 5]
    for k in ("2", "5"):
        for name in ["copy", "mean", "stack_mean", *TECHNIQUES, "ties_warm", "dare_ties_warm", "breadcrumbs_ties_warm"]:
            entry = results["by_k"][k][name]
            assert entry["seconds"] > 0 and entry["gb_per_s"] > 0 and entry["peak_anon_extra_mib"] >= 0, (k, name)
    exactness = results["exactness"]
    assert set(exactness) == {f"{name}_k{k}" for name in TECHNIQUES for k in (3, 20)}
    assert all(check["exact"] for check in exactness.values())
    assert all(check["differing_entries"] == 0 for name, check in exactness.items() if not name.startswith("average"))
    assert results["naive_kthvalue_threshold"]["seconds"] > 0
    assert any(line.startswith("exactness") and line.endswith(" OK") for line in lines)
    assert any(line.startswith("warm (") for line in lines)


def test_pool_scaling_quick_covers_every_deploy_strategy():
    results, _ = run_quick("pool_scaling.py")
    for technique in ("average", "ties"):
        for strategy in ("ft", "ema", "all", "ft-zs"):
            for n in ("2", "5"):
                entry = results["by_technique"][technique][strategy][n]
                # serving the latest expert (ft) is a lookup of a memory-mapped file: it may round to 0 s
                assert entry["seconds"] >= 0 if strategy == "ft" else entry["seconds"] > 0
                assert entry["peak_anon_extra_mib"] >= 0


@pytest.mark.e2e
def test_training_overhead_quick_times_plain_and_ray_train():
    results, lines = run_quick("training_overhead.py")
    entry = results["steps_5"]
    for kind in ("plain", "ray"):
        assert entry[kind]["wall_s"] >= entry[kind]["first_step_s"] > 0 and entry[kind]["torch_threads"] >= 1
    assert entry["overhead"] == pytest.approx(entry["ray"]["wall_s"] / entry["plain"]["wall_s"] - 1, abs=1e-3)
    assert results["ray_init_s"] > 0 and results["ray_worker_resources"]["CPU"] > 0
    assert all(v > 0 for v in results["thread_probe"].values())
    # the expert-training service: started once, then one job per round, each a new expert
    assert results["service_startup_s"] > 0 and results["service_first_job"]["train_s"] > 0
    service = entry["service"]
    assert service["wall_s"] >= service["train_s"] > 0 and service["step_ms"] > 0
    assert service["job_overhead_s"] == pytest.approx(service["wall_s"] - service["train_s"], abs=0.02)
    plain = entry["plain_beside_service"]
    assert entry["service_overhead"] == pytest.approx(service["wall_s"] / plain["wall_s"] - 1, abs=1e-3)
    assert entry["service_overhead_vs_loop"] >= entry["service_overhead"]
    assert results["service_stats"]["trained"] == 2 and results["service_stats"]["hits"] == 0
    assert results["ray_worker_time_ray"].startswith(str(ROOT))
    assert len(verdicts := [line for line in lines if line.endswith((" OK", " MISS"))]) == 2
    assert verdicts[-1].startswith("expert-training service overhead per expert at 5 steps")


@pytest.mark.e2e
def test_sweep_efficiency_quick_accounts_for_the_reduced_quickstart():
    results, lines = run_quick("sweep_efficiency.py")
    quick = results["quickstart"]
    assert quick["trials"] == 3 and quick["trainings"] == 4 and quick["trainings_saved_by_dedup"] == 2
    assert quick["cache_log"] == "experts trained 4, reused from the cache 2"
    assert quick["busy_cpu_s"]["train"] > 0 and quick["busy_cpu_s"]["eval"] > 0
    assert 0 < quick["busy_fraction"] and 0 < quick["cpu_utilization"] and quick["wall_s"] > 0
    # the console line on the training service: 2 CPUs (or more) give the quickstart's 3 trials 3 groups
    assert quick["worker_groups"] >= 1 and quick["workers_per_expert"] == 1 and quick["cpu_share_per_worker"] > 0
    assert quick["trials_at_once"] == min(3, 2 * quick["worker_groups"])
    # the baseline: the same trials in one process without Ray, the same distinct experts trained once
    assert quick["simulate_trainings"] == quick["trainings"] and quick["simulate_reused"] == 2
    assert quick["simulate_wall_s"] > 0
    assert quick["ray_vs_simulate"] == pytest.approx(quick["wall_s"] / quick["simulate_wall_s"], rel=0.02)
    assert results["targets"] == 2 and any(
        line.startswith("quickstart: Ray sweep wall / one-process") for line in lines
    )


@pytest.mark.e2e
def test_sweep_scale_quick_measures_the_fixed_cost_per_trial_at_two_sizes():
    results, lines = run_quick("sweep_scale.py")
    runs = results["embedded"]
    assert set(runs) == {"20", "40"} and "search" not in results
    for n, r in runs.items():
        assert r["trials"] == int(n) and r["wall_per_trial_s"] == pytest.approx(r["wall_s"] / int(n), abs=0.01)
        assert r["fixed_cpu_s"] == pytest.approx(r["cpu_s"] - r["work_cpu_s"], abs=0.2)
        assert r["fixed_cpu_per_trial_s"] == pytest.approx(r["fixed_cpu_s"] / int(n), abs=0.01)
        # 20 policies of one seed share the first expert and, per init strategy, the second
        assert r["trainings"] + r["trainings_saved_by_dedup"] == 2 * int(n) and r["trainings"] < int(n) / 2
        assert r["driver_peak_mib"] > 0 and r["experiment_state_bytes"] > 0 and r["report_s"] > 0
    assert runs["40"]["trainings"] == 2 * runs["20"]["trainings"]  # a second seed trains its own
    marginal = (runs["40"]["fixed_cpu_s"] - runs["20"]["fixed_cpu_s"]) / 20
    assert results["embedded_marginal_fixed_cpu_per_trial_s"] == pytest.approx(marginal, abs=0.01)
    assert len(lines) >= 6 and any(line.startswith("embedded: fixed cost per trial at 40 / at 20") for line in lines)


def test_data_loading_quick_reads_training_batches_through_the_real_path():
    results, lines = run_quick("data_loading.py")
    assert results["batch"] == 32 and results["batches"] == 4 and results["device"] in ("cpu", "cuda")
    assert results["tree_images"] > 500 and results["train_images"] > 0 and results["pool_samples"] > 0
    # task 2 of the mixture: the pretraining pool's share from the shards, the current task and replay
    assert sum(results["batch_mix"].values()) == 32 and min(results["batch_mix"].values()) > 0
    cpus = results["machine"]["cpus"]
    assert results["workers"] == sorted({1, cpus})
    assert set(results["by_workers"]) == {str(w) for w in results["workers"]}
    for workers, entry in results["by_workers"].items():
        for mode in ("prep", "next"):
            measured = entry[mode]
            assert measured["images_per_s"] > 0 and measured["images_per_cpu_s"] > 0, (workers, mode)
            per_core = measured["images_per_s"] / min(int(workers), cpus)
            assert measured["images_per_s_per_core"] == pytest.approx(per_core, abs=0.1)
            assert [run["images"] for run in measured["runs"]] == [4 * 32]
            assert measured["peak_rss_growth_mib"] >= 0 and measured["peak_anon_growth_mib"] >= 0
    assert all(ms > 0 for ms in results["per_image_ms"].values())
    assert results["peak_rss_mib"] >= results["rss_after_experiment_mib"] > 0
    assert results["memory_bound_mib"] == pytest.approx(4 * 6 * 32 * 3 * 224 * 224 / (1 << 20) + 200, abs=0.1)
    verdicts = [line for line in lines if line.endswith((" OK", " MISS"))]
    assert len(verdicts) == 2 and "images/s per core" in verdicts[0] and verdicts[1].startswith("memory for images")


@pytest.mark.e2e
def test_real_model_e2e_quick_measures_every_process_of_the_sweep():
    results, lines = run_quick("real_model_e2e.py")
    assert results["rc"] == 0 and not results["timed_out"] and results["missing"] == []
    assert results["trial_timesteps_found"] == results["trial_timesteps_expected"] == 6 and results["metrics_rows"] > 0
    assert results["setup"]["arch"] == "tiny-clip" and results["setup"]["plan"].startswith("real-model-e2e: 2 trials")
    assert results["cache_log"] == "experts trained 3, reused from the cache 1"
    memory = results["memory"]
    for name in ("driver", "train_worker", "merge_service", "evaluator", "trial_driver", "raylet", "gcs_server"):
        entry = memory["by_class"][name]
        assert entry["count"] >= 1 and entry["peak_rss_mib"] >= entry["peak_anon_mib"] > 0, name
    assert memory["by_class"]["merge_service"]["rss_mib_by_mapping"]["anon"] > 0
    assert memory["tree_peak_rss_mib"] >= memory["tree_peak_pss_mib"] > 0 and memory["pss_samples"] >= 1
    assert set(memory["at_tree_peak_rss_mib"]) >= {"driver", "train_worker", "merge_service", "evaluator"}
    assert results["limits_mib"]["merge_service"] == pytest.approx(7 * results["setup"]["model_mib"] + 1536, abs=0.5)
    verdicts = [line for line in lines if line.endswith((" OK", " MISS"))]
    assert len(verdicts) == 4 and verdicts[0].startswith("sweep finished: rc 0, 6/6") and verdicts[0].endswith(" OK")
    processes = [v.split(" peak private memory")[0] for v in verdicts[1:]]
    assert processes == ["largest Train worker", "merge actor", "evaluator"]


def test_image_check_quick_reads_every_header_then_reuses_the_verdict():
    results, lines = run_quick("image_check.py")
    assert results["images"] == 400 and results["workers"] >= 1
    for run in ("fresh", "cached"):
        assert results[run]["per_s"] > 0 and results[run]["unreadable"] == 0, run
    assert any(line.startswith("FoMo-in-Flux's 2,530,000 images") for line in lines)
