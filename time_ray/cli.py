"""The ``time-ray`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from time_ray.core.errors import TimeRayError
from time_ray.logs import configure

logger = logging.getLogger("time_ray.cli")  # not __name__: `python -m time_ray.cli` runs it as __main__

DESCRIPTION = """\
time-ray: simulate temporal model merging (TIME, CVPR 2025) with Ray.

A sweep config names a model, a task stream, a compute budget and a grid of policies
(init strategy x deploy strategy x merging technique). `time-ray sweep` runs every policy as a
Ray Tune trial (experts finetuned by Ray Train, checkpoints merged by the merge service) and writes
DIR/metrics.parquet (per trial, timestep, dataset) and DIR/timesteps.parquet (A_KA, A_ZS, GM and
costs per trial and timestep).

Diagnostics (progress lines, what a sweep is doing) go to stderr, results to stdout. -v/--verbose
adds debugging detail (and for `sweep`, Ray's worker logs); -q/--quiet keeps warnings and errors
only. Both may come before or after the command, e.g. time-ray --quiet sweep configs/quickstart.yaml."""

VERBOSE_HELP = "more detail on stderr: debugging messages and, for sweep, Ray's worker logs"
QUIET_HELP = "on stderr only warnings and errors: no progress lines (results on stdout as always)"


def _add_log_options(parser: argparse.ArgumentParser, default=argparse.SUPPRESS) -> None:
    """-v/--verbose and -q/--quiet, on the top-level parser (default False) and on every command
    (argparse.SUPPRESS: a command's parser leaves what came before the command as it was)."""
    parser.add_argument("-v", "--verbose", action="store_true", default=default, help=VERBOSE_HELP)
    parser.add_argument("-q", "--quiet", action="store_true", default=default, help=QUIET_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="time-ray", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _add_log_options(parser, default=False)
    sub = parser.add_subparsers(dest="command", required=True)

    sweep = sub.add_parser(
        "sweep",
        help="run every policy of a config (local embedded Ray, or the cluster in RAY_ADDRESS)",
        description="Run a sweep. Without RAY_ADDRESS an embedded local Ray is "
        "started on 127.0.0.1 and stopped at the end.",
    )
    sweep.add_argument("config", help="sweep YAML, e.g. configs/quickstart.yaml")
    sweep.add_argument(
        "--output",
        "-o",
        help="where results, expert cache and pools go: a directory (default: "
        "results/<config name>) or a storage URI such as s3://bucket/path, "
        "gs://bucket/path, file:///shared/path",
    )
    sweep.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set budget.steps_per_task=50 (repeatable)",
    )
    sweep.add_argument(
        "--resume", action="store_true", help="finish an interrupted sweep in --output: finished trials are kept"
    )

    data = sub.add_parser("data", help="inspect the benchmark of a config")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    stats = data_sub.add_parser(
        "stats",
        help="measure the properties that make the stream worth simulating",
        description="Builds (or loads) the base model, evaluates it, trains sequentially over the stream "
        "in one process (no Ray) and reports: the base model's A_KA / A_ZS (0.4-0.7: the adaptation "
        "domains partly known, as FoMo-in-Flux's are to OpenCLIP), held-out accuracy / chance (>= 3), "
        "the mean held-out classification accuracy (0.6-0.75) and its highest (<= 0.9: not at the ceiling, "
        "as FoMo-in-Flux's held-out sets are not), the worst expert's accuracy on its own task (>= 0.8), "
        "and the held-out accuracy that sequential finetuning loses (its 95% interval over the held-out "
        "datasets above 0). Exit code 1 if one fails.",
    )
    stats.add_argument("config", nargs="?", default="configs/quickstart.yaml")
    stats.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    stats.add_argument("--json", action="store_true", help="print the measurements as one JSON object")
    show = data_sub.add_parser(
        "show",
        help="list the datasets and the task stream of a config, without decoding any image",
        description="Reads the config's data (info files, stream file: no image is decoded, no model built) and "
        "prints per dataset its role (adaptation / heldout / pretrain / retrieval), classes, train and "
        "test images, prompt template and first training caption, then the stream cut into tasks. "
        '--json prints {"datasets": [{name, role, classes, n_train, n_test, template, caption}, ...], '
        '"tasks": [["DATASET+++classname", ...], ...]}.',
    )
    show.add_argument("config")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    show.add_argument("--json", action="store_true", help="print one JSON object")

    merge = sub.add_parser(
        "merge",
        help="merge checkpoints with a named technique (no Ray)",
        description="Merge safetensors (or weights-only torch) checkpoints tensor by tensor with a registered "
        "technique, e.g. time-ray merge a.safetensors b.safetensors --base theta0.safetensors "
        "--technique ties --param lambda=1.0 --param prune=0.2 --output merged.safetensors",
    )
    merge.add_argument("checkpoints", nargs="+", help="the models to merge (theta_1 .. theta_n)")
    merge.add_argument("--technique", "-t", default="average", help="registered technique (default average)")
    merge.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="technique parameter, e.g. lambda=0.3 (repeatable)",
    )
    merge.add_argument("--weights", help="comma-separated weights w_k (default uniform)")
    merge.add_argument("--base", help="theta_0, the anchor of task vectors (required by task-vector techniques)")
    merge.add_argument("--output", "-o", required=True, help="where to write the merged .safetensors")

    plan = sub.add_parser(
        "plan", help="trials, unique experts, GFLOPs, device-hours and storage of a config, without running anything"
    )
    plan.add_argument("config")
    plan.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    plan.add_argument(
        "--device-tflops",
        type=float,
        default=100.0,
        help="sustained training TFLOP/s of one device, for the device-hours estimate (default 100)",
    )
    plan.add_argument(
        "--no-timing",
        action="store_true",
        help="skip the few training steps timed on this machine for the wall-clock estimate",
    )

    report = sub.add_parser(
        "report",
        help="which policy, at what cost: tables, figures and findings of a sweep directory",
        description="Reads a sweep directory (finished, or partial: the trials that are missing are listed) and "
        "writes into --output: report.html (self-contained, figures embedded, opens offline), the "
        "figures as PNG files (A_KA/A_ZS trajectories, A_KA vs A_ZS, cost vs GM with the Pareto "
        "front, init x deploy GM, GM across merging techniques, the accuracy matrix of one policy, GM "
        "vs compute budget) and summary.md (accuracy and cost per policy with the spread over seeds, "
        "the findings of TIME with seed intervals, the variance of GM by decision). Several "
        "directories make one report: those whose sweep has the first one's setting (model, stream, "
        "training, budget unit; e.g. the same experiment at other budgets or seeds) are pooled with it, "
        "the others are companions, compared with it policy by policy and seed by seed (a sweep without "
        "replay for finding 2, another model for finding 5). A companion may change the data mixture, the "
        "model architecture, the training recipe or the budget unit; directories that ran different data, task "
        "streams or base models are refused (exit code 2, nothing written): compare them separately. A trial "
        "found in two pooled directories (the same config and seed run twice) counts once, with a warning. "
        "What the sweep cannot back is not claimed: a finding tested on fewer than 2 seeds gets 'no verdict' "
        "(naming its seeds), and the variance of GM by decision is withheld, saying what is missing, when no "
        "policy ran 2 seeds or no decision varies with the others fixed.",
        epilog="example: time-ray report results/findings-t20 results/findings-t20-compute "
        "results/findings-t20-noreplay results/findings-t20-wide --output analysis/reports/findings-t20; "
        "tables for a paper as well: time-ray report results/findings-t20 --format html,md,csv,latex "
        "(writes results/findings-t20/report/tables/*.csv and *.tex beside the report)",
    )
    report.add_argument(
        "dir",
        nargs="+",
        help="the --output directory of `time-ray sweep`, e.g. results/quickstart; "
        "more directories: pooled or companion sweeps (see above)",
    )
    report.add_argument("--output", "-o", help="where to write the report (default: DIR/report of the first DIR)")
    report.add_argument(
        "--policy", help="the policy of the accuracy matrix, as named in the tables (default: the best final GM)"
    )
    report.add_argument(
        "--format",
        dest="formats",
        default="html,md",
        metavar="FORMATS",
        help="what to write, a comma-separated list of: html (report.html), md (summary.md), csv "
        "(tables/<table>.csv: accuracy, cost, findings, variance, companion-<sweep>, missing; numbers as "
        "numbers, means and standard deviations in separate columns), latex (tables/<table>.tex: booktabs "
        "tabulars with escaped underscores, to \\input in a paper; needs \\usepackage{booktabs}). The "
        "figures (PNG) are drawn with html or md. Default: html,md; e.g. --format csv,latex for the "
        "tables alone, --format html,md,csv,latex for everything",
    )
    listing = sub.add_parser(
        "list",
        help="the merging techniques, strategies and presets a config may name, with parameters and defaults",
        description="Lists what `policies.presets` and `policies.grid` accept, from the registries the config is "
        "checked against: techniques (merge: [{technique: NAME, PARAM: VALUE}]) with their parameters and "
        "defaults, init and deploy strategies, the EMA-chain / 'all' settings, and the presets.",
    )
    listing.add_argument("kind", nargs="?", choices=("techniques", "strategies", "presets"), help="one kind only")
    export = sub.add_parser(
        "export",
        help="write one model of a sweep (an expert, or the model deployed after task T) as a checkpoint for open_clip",
        description="Writes theta^o_T (--deployed, the default: the model the trial's policy serves after task T, "
        "merged from its pool as the sweep did; T = 0 is theta_0) or theta^s_T (--expert: the expert trained on "
        "task T) of one trial of a sweep directory, as a plain open_clip state dict: .safetensors, or a torch "
        "file (.pt, .pth, .bin) by the suffix of --output. No Ray and no data needed. Trial ids: the trial_id "
        "column of DIR/trials.parquet or the `time-ray plan` list.",
        epilog="load it with open_clip (time-ray's own architectures, e.g. tiny-clip, are registered first):\n"
        "  import open_clip\n"
        "  from time_ray.core.models import MODEL_CONFIG_DIR\n"
        "  open_clip.add_model_config(MODEL_CONFIG_DIR)  # tiny-clip, tiny-clip-wide; harmless for open_clip's own\n"
        "  model = open_clip.create_model(ARCH, pretrained=FILE)  # ARCH: model.arch in DIR/config.yaml\n"
        "  tokenizer = open_clip.get_tokenizer(ARCH)\n"
        "or model.load_state_dict(safetensors.torch.load_file(FILE)) on a model of the same architecture.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("dir", help="the --output directory of `time-ray sweep` (or its storage URI)")
    export.add_argument(
        "--trial",
        required=True,
        help="the trial's id (DIR/trials.json), e.g. best-in-time-average-1a2b3c4d, or a policy name that only one "
        "trial has, e.g. best-in-time",
    )
    export.add_argument("--timestep", "-t", type=int, required=True, help="T: after task T (1..tasks)")
    which = export.add_mutually_exclusive_group()
    which.add_argument("--deployed", dest="kind", action="store_const", const="deployed", help="theta^o_T (default)")
    which.add_argument("--expert", dest="kind", action="store_const", const="expert", help="theta^s_T")
    export.set_defaults(kind="deployed")
    export.add_argument(
        "--output", "-o", help="the file to write (default: DIR/export/<trial>-t<T>-<expert|deployed>.safetensors)"
    )
    _add_log_options(export)
    for command in (sweep, data, stats, show, merge, plan, report, listing):
        _add_log_options(command)
    return parser


def cmd_list(args) -> int:
    from time_ray.listing import render

    print(render(args.kind))
    return 0


def cmd_report(args) -> int:
    from time_ray.analysis.formats import TABLES_DIR, parse_formats
    from time_ray.analysis.report import build_report

    formats = parse_formats(args.formats)  # an unknown format is one line, before any directory is read
    result = build_report(args.dir, args.output, args.policy, formats)
    written = [str(result[k]) for k in ("html", "markdown") if result[k] is not None]
    if result["figures"]:
        written.append(f"{len(result['figures'])} figures (accuracy matrix: {result['policy']})")
    if result["tables"]:
        written.append(f"{len(result['tables'])} table files in {result['output'] / TABLES_DIR}")
    print(f"report of {result['finished']} of {result['trials']} finished trials: {', '.join(written)}")
    return 0


def cmd_export(args) -> int:
    from time_ray.export import LOAD_HINT, export_model

    out = export_model(args.dir, args.trial, args.timestep, args.kind, args.output)
    print(
        f"exported the {out['kind']} model of trial {out['trial_id']} at timestep {out['timestep']} -> {out['file']} "
        f"({out['bytes'] / 2**20:.1f} MiB, {out['arch']}); load it with: "
        + LOAD_HINT.format(arch=out["arch"], file=out["file"])
    )
    return 0


def cmd_sweep(args) -> int:
    from pathlib import Path

    from time_ray.config import load_config
    from time_ray.orchestration.storage import resolve_output
    from time_ray.orchestration.sweep import run_sweep, summary_table

    cfg = load_config(args.config, args.overrides)
    # a directory (made absolute here, once: Ray runs trials in directories of its own) or a storage URI
    output = resolve_output(args.output or str(Path("results") / cfg.name))
    try:
        steps = run_sweep(cfg, output, resume=args.resume, verbose=args.verbose)
    finally:
        from time_ray.orchestration.local_ray import shutdown_ray

        shutdown_ray()
    print(summary_table(steps))
    where = output.split("?")[0].rstrip("/")
    print(f"\nresults: {where}/metrics.parquet, {where}/timesteps.parquet, {where}/trials.parquet, {where}/config.yaml")
    return 0


def _one_line(text: object) -> str:
    """A name from the data as one line of output: control characters (a newline in a folder name) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def _print_data(name: str, rows: list[dict], tasks: list[list[str]], size: int) -> None:
    images = sum(r["n_train"] + r["n_test"] for r in rows)
    rows = [{k: _one_line(v) if isinstance(v, str) else v for k, v in r.items()} for r in rows]
    tasks = [[_one_line(pair) for pair in task] for task in tasks]
    print(
        f"{name}: {len(rows)} datasets, {sum(r['classes'] for r in rows)} classes, {images:,} images "
        f"(read per batch at {size} px; no process holds them)"
    )
    print(f"  {'dataset':<20} {'role':<11} {'classes':>7} {'train':>8} {'test':>7}  template | first caption")
    for r in rows:
        print(
            f"  {r['name']:<20} {r['role']:<11} {r['classes']:>7} {r['n_train']:>8} {r['n_test']:>7}  "
            f"{r['template'] or '-'} | {r['caption'] or '-'}"
        )
    low, high = min(map(len, tasks)), max(map(len, tasks))
    print(f"stream: {len(tasks)} tasks of {low if low == high else f'{low}-{high}'} (dataset, class) pairs")
    for t, task in enumerate(tasks, 1):
        shown = ", ".join(task[:3]) + (f", ... ({len(task) - 3} more)" if len(task) > 3 else "")
        print(f"  task {t}: {shown}")


def cmd_data_show(args) -> int:
    """``time-ray data show``: the datasets and the task stream of a config, no image decoded."""
    import json

    from time_ray.config import load_config
    from time_ray.plan import data_outline

    cfg = load_config(args.config, args.overrides)
    outline = data_outline(cfg, strict=False)  # every problem listed, none refused
    if args.json:
        print(json.dumps({"datasets": outline.rows, "tasks": outline.tasks, "problems": outline.problems.as_json()}))
        return 0
    _print_data(cfg.name, outline.rows, outline.tasks, outline.size)
    _print_problems(outline.problems)
    return 0


def _print_problems(problems) -> None:
    """``data show``'s 'problems:' block: each kind found, its count and its first offenders, one line each."""
    from time_ray.core.real_data.problems import SHOWN

    if not problems:
        print("problems: none")
        return
    print("problems:")
    for _, what, offenders in problems.kinds():
        if not offenders:
            continue
        print(f"  {len(offenders):,} {what}:")
        for offender in offenders[:SHOWN]:
            print(f"    {_one_line(offender)}")
        if len(offenders) > SHOWN:
            print(f"    ... and {len(offenders) - SHOWN:,} more (--json lists them all)")


def cmd_data(args) -> int:
    import json

    if args.data_command == "show":
        return cmd_data_show(args)
    from time_ray.config import base_model_source, experiment_settings, load_config, steps_per_task
    from time_ray.core.base_model import load_base
    from time_ray.core.data_stats import benchmark_stats
    from time_ray.core.experiment import Experiment

    cfg = load_config(args.config, args.overrides)
    base = load_base(**base_model_source(cfg))
    experiment = Experiment.from_settings(experiment_settings(cfg))
    steps = steps_per_task(cfg)
    logger.info("sequential finetuning over %d tasks, %d steps each (no Ray)", experiment.tasks, steps)
    stats = benchmark_stats(experiment, base, steps, cfg.seeds[0])
    if args.json:
        print(json.dumps(stats))
    else:
        print(
            f"datasets: {stats['datasets']['adaptation']} adaptation, {stats['datasets']['heldout']} held out "
            f"({stats['retrieval_datasets']} retrieval); {stats['classes']} classes; "
            f"{stats['train_images']} train images; {stats['tasks']} tasks"
        )
        for p in stats["properties"]:
            interval = f"  [95% CI {p['interval'][0]:+.3f}, {p['interval'][1]:+.3f}]" if "interval" in p else ""
            print(
                f"  {p['property']:<42}{p['value']:>8.3f}   target {p['target']:<8} "
                f"{'holds' if p['holds'] else 'FAILS'}{interval}"
            )
    return 0 if all(p["holds"] for p in stats["properties"]) else 1


def cmd_merge(args) -> int:

    from time_ray.config import parse_key_value
    from time_ray.core.checkpoints import SafetensorsCheckpoint, save_atomic
    from time_ray.core.errors import ConfigError
    from time_ray.core.merging import make_technique
    from time_ray.core.models import load_state_dict

    def open_checkpoint(path):
        from pathlib import Path

        if not Path(path).is_file():
            raise ConfigError(f"checkpoint {path}: no such file.")
        return SafetensorsCheckpoint(path) if str(path).endswith(".safetensors") else load_state_dict(path)

    params = dict(parse_key_value(item, "--param", "lambda=0.3") for item in args.param)
    technique = make_technique(args.technique, "--technique", **params)
    experts = [open_checkpoint(p) for p in args.checkpoints]
    base = open_checkpoint(args.base) if args.base else None
    if technique.uses_base() and base is None:
        raise ConfigError(
            f"--base: {args.technique} merges task vectors tau_k = theta_k - theta_0 and needs "
            "theta_0; give the base checkpoint with --base."
        )
    weights = _weights(args.weights, len(experts)) if args.weights is not None else None
    names = set(experts[0])
    for path, expert in zip(args.checkpoints[1:], experts[1:]):
        if set(expert) != names:
            raise ConfigError(
                f"checkpoint {path}: its tensors differ from {args.checkpoints[0]}'s "
                f"(first difference: {sorted(set(expert) ^ names)[0]!r})."
            )
    try:
        merged = technique.merge(experts, weights, base)
    except ValueError as exc:
        raise ConfigError(f"--technique {args.technique}: {exc}.") from exc
    size = save_atomic(merged, args.output)
    print(
        f"merged {len(experts)} checkpoints with {args.technique} {params or ''} -> {args.output} "
        f"({size / 2**20:.1f} MiB)"
    )
    return 0


def _weights(text: str, n: int) -> list[float]:
    """``--weights 0.25,0.75``: one finite number per checkpoint."""
    import math

    from time_ray.core.errors import ConfigError

    parts = [p.strip() for p in text.split(",")]
    try:
        weights = [float(p) for p in parts]
    except ValueError:
        raise ConfigError(f"--weights {text!r}: expected comma-separated numbers, e.g. 0.25,0.75.") from None
    if len(weights) != n:
        raise ConfigError(f"--weights: {len(weights)} weights for {n} checkpoints.")
    bad = [p for p, w in zip(parts, weights) if not math.isfinite(w)]
    if bad:
        raise ConfigError(
            f"--weights {text!r}: {bad[0]} is not a finite number; give one finite weight per checkpoint."
        )
    return weights


def _base_model_line(cfg) -> str:
    """theta_0 as the sweep will get it, checked as the sweep checks it (a checkpoint must exist and fit
    the architecture; a tag must be open_clip's for it and be cached or downloadable)."""
    from time_ray.config import base_model_source
    from time_ray.core.base_model import builtin_cache_path, load_base, real_data_cached

    pretrained, arch = cfg.model.pretrained, cfg.model.arch
    if pretrained == "builtin" and cfg.stream.benchmark != "builtin":
        from time_ray.core.real_data import pretrain_catalog

        recipe, catalog = cfg.model.base_training, pretrain_catalog(cfg.stream.benchmark, cfg.stream.data)
        cached = real_data_cached(arch, cfg.stream.benchmark, cfg.stream.data, recipe)
        state = (
            f"cached at {cached}"
            if cached
            else f"not cached yet: {recipe.steps} steps at batch {recipe.batch_size} when the sweep starts"
        )
        return (
            f"base model: builtin ({arch} pretrained on the pretrain-role data: "
            f"{', '.join(d.name for d in catalog.datasets)}, {len(catalog.items):,} train images; {state})"
        )
    if pretrained == "builtin":
        path = builtin_cache_path(arch, cfg.stream.builtin, cfg.model.base_training)
        recipe = cfg.model.base_training
        state = (
            f"cached at {path}"
            if path.exists()
            else f"not cached yet: {recipe.steps} steps at batch {recipe.batch_size} when the sweep starts"
        )
        return f"base model: builtin ({arch} pretrained on the built-in pretraining pool; {state})"
    if pretrained == "none":
        return f"base model: none ({arch} at random initialisation: zero-shot accuracy starts at chance)"
    load_base(**base_model_source(cfg))
    return f"base model: {pretrained} (loaded and checked against {arch})"


def _bytes(n: float) -> str:
    return f"{n / 2**30:,.2f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def _data_path_line(data: dict) -> str:
    """One line of ``time-ray plan``: how images are read, what they take on disk and in memory."""
    if data["kind"] == "tensors":
        return (
            f"data path: the built-in benchmark, {data['images']:,} images held as tensors "
            f"({_bytes(data['memory_bytes'])} in each process that trains or evaluates)"
        )
    pool = (
        f"; pretraining pool: {data['shards']:,} tar shard(s), {_bytes(data['shard_bytes'])}, streamed"
        if data["shards"]
        else "; no pretraining pool (stream.data.pretrain_shards)"
    )
    return (
        f"data path: {data['images']:,} image files read per batch, no store built "
        f"({_bytes(data['disk_bytes'])} on disk, estimated from a sample){pool}; at most "
        f"{data['memory_bytes'] / 2**20:,.0f} MiB of pixels per process that trains or evaluates, a node holding "
        f"one such process per training worker and evaluator; RandomResizedCrop {'on' if data['augment'] else 'off'}"
    )


def cmd_plan(args) -> int:
    from time_ray.config import load_config
    from time_ray.plan import data_outline, make_plan, trial_lines

    cfg = load_config(args.config, args.overrides)
    rows, tasks, size, _, _ = data_outline(cfg)  # what the sweep checks first: the data, theta_0's source
    base = _base_model_line(cfg)
    plan = make_plan(cfg, device_tflops=args.device_tflops, time_here=not args.no_timing)
    print(
        f"{cfg.name}: {plan['trials']} trials x {plan['tasks']} tasks; {plan['expert_trainings']} expert trainings, "
        f"{plan['unique_experts']} unique after deduplication "
        f"({plan['expert_trainings'] - plan['unique_experts']} reused from the expert cache)"
    )
    print(
        f"training: {plan['gflops_per_step']:.3f} GFLOPs per step (measured: {cfg.model.arch}, batch "
        f"{cfg.training.batch_size}); {plan['train_gflops']:,.0f} GFLOPs for the unique experts = "
        f"{plan['device_hours']:.3g} device-hours at {plan['device_tflops']:g} TFLOP/s sustained"
    )
    print(
        f"storage: about {plan['storage_bytes'] / 2**30:.2f} GiB (model {plan['model_bytes'] / 2**20:.1f} MiB; "
        "the expert cache, which pools reference; EMA chains; theta_0)"
    )
    print(base)
    print(_data_path_line(plan["data"]))
    if plan["here"] is not None:
        print(_here_line(plan["here"], cfg.training.batch_size))
    _print_data("data", rows, tasks, size)
    if cfg.search.samples:
        print(
            f"search: {cfg.search.samples} {cfg.search.method} draws of {', '.join(cfg.search.space)} per grid "
            "policy that has them (the same draws for every policy)"
        )
    stop = cfg.search.early_stopping
    if stop.scheduler:
        print(
            f"early stopping: {stop.scheduler.upper()} on {stop.metric} (grace {stop.grace_period} timestep(s), "
            f"reduction {stop.reduction_factor}): about {plan['expected_trainings_with_stopping']} of "
            f"{plan['expert_trainings']} expert trainings expected to run "
            f"({1 - plan['early_stopping_fraction']:.0%} saved before deduplication); after the run, "
            "trials.parquet says which trials were stopped and what that saved"
        )
    print("trials:")
    print("\n".join(trial_lines(plan["trials_list"])))
    for warning in plan["warnings"]:
        logger.warning("time-ray: warning: %s", warning)
    return 0


def _here_line(here: dict, batch: int) -> str:
    """``plan``'s estimate of the training time on this machine."""
    from time_ray.core.eta import duration

    scaled = f"measured at batch {here['timed_batch']}, scaled by FLOPs" if here["timed_batch"] < batch else "measured"
    return (
        f"this machine: about {duration(here['train_seconds'])} of training, one expert at a time "
        f"({here['seconds_per_step']:.3g} s per step of batch {batch} on {here['device']}, {scaled}); "
        "merging and evaluation come on top"
    )


def _printable_streams() -> None:
    """stdout and stderr that cannot encode a character (a C locale, a pipe opened as ASCII) escape it
    instead of failing the command at its first non-ASCII dataset or class name."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure") and (stream.encoding or "").lower().replace("-", "") != "utf8":
            stream.reconfigure(errors="backslashreplace")


def _terminate(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (e.g. a job being stopped): shut Ray down like Ctrl-C does


PATH_VARIABLES = ("TIME_RAY_CACHE", "RAY_TMPDIR", "TIME_RAY_FAULTS_DIR")


def _absolute_environment() -> None:
    """Directories named by environment variables, made absolute before any Ray process inherits them."""
    import os

    for name in PATH_VARIABLES:
        value = os.environ.get(name)
        if value and not os.path.isabs(os.path.expanduser(value)):
            os.environ[name] = os.path.abspath(os.path.expanduser(value))


def _internal_error(exc: BaseException) -> int:
    """An error we cannot explain: one line, and the traceback in a log file for the bug report."""
    import tempfile
    import time
    import traceback
    from pathlib import Path

    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    where = None
    for directory in (Path.home() / ".cache" / "time-ray" / "logs", Path(tempfile.gettempdir())):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            where = directory / f"time-ray-error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
            where.write_text(f"time-ray {' '.join(sys.argv[1:])}\n\n{text}")
            break
        except OSError:
            where = None
    message = " ".join(str(exc).split())[:300] or "no message"
    logger.error(
        "time-ray: internal error: %s: %s (%s; please report it)",
        type(exc).__name__,
        message,
        f"traceback in {where}" if where else "no log file could be written",
    )
    return 1


def _os_error(exc: OSError) -> str:
    """A file system error as the file and what went wrong (a full disk, a read-only directory, ...)."""
    name = exc.filename if exc.filename is not None else ""
    other = f" -> {exc.filename2}" if getattr(exc, "filename2", None) else ""
    return f"{name}{other}: {exc.strerror or exc}" if name else str(exc)


def _log_level(args) -> int:
    """--quiet: warnings and errors; --verbose: DEBUG; otherwise INFO (progress lines and the like)."""
    if getattr(args, "quiet", False):
        return logging.WARNING
    return logging.DEBUG if getattr(args, "verbose", False) else logging.INFO


def main(argv: list[str] | None = None) -> int:
    from time_ray.core.eta import mark_command_start

    mark_command_start()  # progress lines count from here, Ray's start-up included
    _printable_streams()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose and args.quiet:
        parser.error("-v/--verbose and -q/--quiet: choose one")
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    _absolute_environment()
    level = _log_level(args)
    configure(level)  # the one handler of time-ray's messages (time_ray.logs)
    words = sys.argv[1:] if argv is None else argv
    logger.debug(
        "time-ray: `time-ray %s` (log level %s, pid %d)", " ".join(words), logging.getLevelName(level), os.getpid()
    )
    try:
        if args.command == "export":
            return cmd_export(args)
        commands = {"sweep": cmd_sweep, "plan": cmd_plan, "data": cmd_data, "merge": cmd_merge, "report": cmd_report}
        return (commands | {"list": cmd_list})[args.command](args)
    except TimeRayError as exc:
        # one line (a library's multi-line message folded into it); the terminal wraps it
        logger.error("time-ray: error: %s", " ".join(str(exc).split()))
        return 2
    except KeyboardInterrupt:
        resume = "; rerun with --resume to finish the sweep" if args.command == "sweep" else ""
        logger.error("time-ray: interrupted%s.", resume)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except MemoryError:
        logger.error(
            "time-ray: error: out of memory; lower the sizes in the config (stream.builtin, training.batch_size, "
            "resources.max_concurrent_trials)."
        )
        return 2
    except OSError as exc:  # the environment: a full disk, a directory we may not write, a vanished file
        logger.error("time-ray: error: %s.", _os_error(exc))
        return 2
    except Exception as exc:  # noqa: BLE001 - anything else is our bug: one line plus a log file
        from time_ray.orchestration import memory

        report = memory.memory_report(exc)  # a Ray process killed for memory, seen here: one line too
        if report is None:
            return _internal_error(exc)
        process, advice = memory.process_of(report, "a process of the sweep")
        logger.error(
            "time-ray: error: %s", " ".join(memory.out_of_memory_message(process, report, advice=advice).split())
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
