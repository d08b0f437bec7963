# Two commands do everything on a fresh machine (the venv is created on first use):
#   make quickstart   run configs/quickstart.yaml on an embedded local Ray -> results/quickstart
#   make test         run the test suite (unit tests + end-to-end tests on a real local Ray)
# and, while working on the code:
#   make test-fast    lint, then the tests without a Ray end-to-end sweep (marker e2e) and without the
#                     few slow unit tests in FAST_SKIP (a few minutes on a quiet 2-core machine)
#   make lint         ruff (lint + format check) and mypy
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# torch pins: on x86_64 the build of torch 2.14.1 / torchvision 0.29.1; on aarch64 the CPU build of 2.9.1
TORCH  := $(if $(filter aarch64,$(shell uname -m)),torch==2.9.1 torchvision==0.24.1,torch==2.14.1 torchvision==0.29.1)
OUTPUT ?= results/quickstart

.PHONY: quickstart test test-fast lint venv clean chromium

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

quickstart: $(STAMP)
	$(VENV)/bin/time-ray sweep configs/quickstart.yaml --output $(OUTPUT) $(if $(RESUME),--resume,)

test: $(STAMP) chromium lint
	$(VENV)/bin/python -m pytest -q -rs $(PYTEST_ARGS)

# the slowest tests that are not end-to-end sweeps (pytest --durations on 2 cores): each pretrains a base
# model, finetunes an expert, starts a process or runs a benchmark's quick mode; left out of test-fast, run by test
FAST_SKIP := \
  tests/core/test_data_stats.py::test_small_builtin_benchmark_has_the_properties_that_make_it_worth_simulating \
  tests/core/test_base_model.py::test_pretraining_lines_say_elapsed_time_and_eta \
  tests/core/test_base_model.py::test_builtin_base_is_pretrained_once_then_reused_from_the_cache \
  tests/core/test_finetune_and_evaluate.py::test_finetuning_both_towers_learns_a_task_and_evaluation_is_well_formed \
  tests/core/test_image_memory.py::test_peak_memory_does_not_grow_with_the_number_of_images \
  tests/core/test_real_data_base.py::test_builtin_with_real_data_pretrains_on_the_pretrain_role_datasets_once \
  tests/test_benchmarks.py::test_merge_throughput_quick_measures_every_technique_and_is_exact \
  tests/test_benchmarks.py::test_pool_scaling_quick_covers_every_deploy_strategy \
  tests/test_benchmarks.py::test_data_loading_quick_reads_training_batches_through_the_real_path \
  tests/core/test_image_memory.py::test_image_files_hold_paths_and_no_pixels_after_reading \
  tests/cluster/test_gpu_check.py::test_gpu_check_smoke_run_on_cpu \
  tests/test_bad_inputs.py::test_the_installed_command_gives_one_line_too \
  tests/test_sizes_and_early_checks.py::test_more_trials_than_one_sweep_runs_are_refused_with_the_product_that_made_them \
  tests/core/test_pretrained_offline.py::test_tag_loads_offline_in_a_fresh_process_that_only_sets_hf_home

test-fast: $(STAMP) lint
	$(VENV)/bin/python -m pytest -q -rs -m "not e2e" $(foreach t,$(FAST_SKIP),--deselect $(t)) $(PYTEST_ARGS)

# ruff (lint + format) over the repo and mypy over time_ray/core, configured in pyproject.toml
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# headless Chromium renders report.html in tests/analysis/test_browser.py (Debian's package)
chromium:
	@command -v chromium >/dev/null 2>&1 || (echo "installing Debian's chromium (report screenshot test)" && \
	  apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || \
	  echo "could not install chromium: install it with your package manager, or the browser test fails"

clean:
	rm -rf $(VENV) results
