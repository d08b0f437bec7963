"""The files in cluster/ are valid for their tools (no cloud, no Kubernetes, no Ray started):
the launcher config against Ray's own schema and validation, the RayJob manifest against a
vendored subset of KubeRay's CRD schema, the runtime env against Ray's runtime env parser and
packager; and every command in them is one time-ray accepts."""

import copy
import importlib.util
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from time_ray.cli import build_parser
from time_ray.config import load_config

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
IMAGE_HOME = "/home/ray/time-ray"  # WORKDIR of cluster/Dockerfile: the checkout inside the image
GPUS_PER_INSTANCE = {
    "g5.xlarge": 1,
    "g5.2xlarge": 1,
    "g5.4xlarge": 1,
    "g5.8xlarge": 1,
    "g5.12xlarge": 4,
    "g6.xlarge": 1,
    "g6.2xlarge": 1,
    "g6.4xlarge": 1,
    "p4d.24xlarge": 8,
    "p5.48xlarge": 8,
}
RAYJOB_SCHEMA = yaml.safe_load((Path(__file__).parent / "kuberay_rayjob_v1_schema.yaml").read_text())
QUANTITY = re.compile(RAYJOB_SCHEMA["definitions"]["quantity"]["pattern"])  # Kubernetes resource quantities


def load(name):
    return yaml.safe_load((CLUSTER / name).read_text())


def wait_module():
    spec = importlib.util.spec_from_file_location("wait_for_workers", CLUSTER / "wait_for_workers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def split_wait_and_sweep(command: str) -> tuple[list[str], list[str]]:
    """`python .../wait_for_workers.py ARGS -- time-ray sweep ...` -> (ARGS, sweep argv after `time-ray`)."""
    argv = shlex.split(command)
    assert argv[0] == "python" and argv[1].endswith("cluster/wait_for_workers.py") and "--" in argv, argv
    cut = argv.index("--")
    assert argv[cut + 1] == "time-ray", argv
    return argv[2:cut], argv[cut + 2 :]


def check_sweep_command(sweep_argv: list[str], root_in_command: str = "") -> tuple:
    """The sweep arguments parse with time-ray's own parser and the config loads with its --set."""
    args = build_parser().parse_args(sweep_argv)
    assert args.command == "sweep"
    config = REPO / Path(args.config).relative_to(root_in_command) if root_in_command else REPO / args.config
    cfg = load_config(config, args.overrides)  # raises ConfigError on a bad key or value
    return args, cfg


# -- the cluster launcher config ----------------------------------------------------------------


def launcher_schema():
    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def test_launcher_config_is_valid_for_rays_schema():
    jsonschema.validate(load("aws-gpu.yaml"), launcher_schema())


def test_launcher_config_passes_ray_up_validation():
    """What `ray up` does before it talks to AWS: merge the provider's defaults, then validate."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(load("aws-gpu.yaml")))
    validate_config(prepared)
    assert prepared["available_node_types"]["gpu_worker"]["max_workers"] == 4


def test_launcher_schema_check_catches_mistakes():
    bad = load("aws-gpu.yaml")
    bad["available_node_types"]["gpu_worker"]["min_workers"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, launcher_schema())
    bad = load("aws-gpu.yaml")
    bad["docker"]["gpus"] = "all"  # no such docker option in the launcher
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, launcher_schema())


def test_launcher_config_runs_gpu_workers_with_token_auth():
    cfg = load("aws-gpu.yaml")
    assert cfg["provider"]["type"] == "aws"
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # trials go to the GPU workers
    workers = [t for name, t in cfg["available_node_types"].items() if name != cfg["head_node_type"]]
    gpu = [t for t in workers if t["node_config"]["InstanceType"] in GPUS_PER_INSTANCE]
    assert gpu, "no GPU worker type"
    for t in gpu:
        assert 1 <= t["min_workers"] <= t["max_workers"] <= cfg["max_workers"]
        assert t["node_config"]["IamInstanceProfile"]  # workers write results to S3
    # the header's submit command waits for exactly the GPUs the minimum workers bring
    waits = [int(n) for n in re.findall(r"wait_for_workers\.py --gpus (\d+)", (CLUSTER / "aws-gpu.yaml").read_text())]
    assert waits and set(waits) == {
        sum(t["min_workers"] * GPUS_PER_INSTANCE[t["node_config"]["InstanceType"]] for t in gpu)
    }

    # Ray on the nodes is the Ray of this project
    assert cfg["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-py3") and cfg["docker"][
        "image"
    ].endswith("-gpu")
    starts = [c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token ray start" in c for c in starts)
    head_start = next(c for c in cfg["head_start_ray_commands"] if "ray start" in c)
    assert "--head" in head_start and "--dashboard-host=127.0.0.1" in head_start
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # the token reaches every node

    # time-ray is installed from the checkout that `ray up` copies to each node
    mounted = [remote for remote, local in cfg["file_mounts"].items() if local == "."]
    assert mounted == ["~/time-ray"]
    assert any(re.search(r"pip install .*~/time-ray\b", c) for c in cfg["setup_commands"])
    assert {".venv", ".git", "results"} <= set(cfg["rsync_exclude"])


# -- the runtime env of `ray job submit` ----------------------------------------------------------


def test_runtime_env_is_valid_for_ray():
    from ray.runtime_env import RuntimeEnv

    env = load("runtime_env.yaml")
    parsed = RuntimeEnv(**env)  # Ray's own validation of the fields and their types
    assert parsed["working_dir"] == "."
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in env["env_vars"].items())
    assert env["env_vars"]["HF_HUB_OFFLINE"] == "0"  # a cluster downloads open_clip tags


def test_runtime_env_uploads_the_sources_only(tmp_path):
    """What `ray job submit` uploads from the repository root: the package Ray builds, with the
    excludes and .gitignore, as its working_dir upload does."""
    from ray._private.runtime_env.packaging import _get_excludes, create_package

    env = load("runtime_env.yaml")
    match = _get_excludes(REPO, env["excludes"])
    # excluded by runtime_env.yaml itself, not only by .gitignore; a directory by its own path, so
    # Ray's packager does not walk into it (.venv holds about 6 GB)
    for never in (".venv", ".git", "results", "build", "time_ray.egg-info", "time_ray/__pycache__"):
        assert match(REPO / never), never
    for kept in ("configs/quickstart.yaml", "time_ray/core/results.py", "cluster/wait_for_workers.py"):
        assert not match(REPO / kept), kept

    package = tmp_path / "working_dir.zip"
    create_package(str(REPO), package, include_gitignore=True, excludes=env["excludes"])
    import zipfile

    names = zipfile.ZipFile(package).namelist()
    for needed in ("configs/quickstart.yaml", "time_ray/cli.py", "cluster/wait_for_workers.py", "pyproject.toml"):
        assert needed in names
    assert not [n for n in names if n.split("/")[0] in {".venv", ".git", "results"}]
    assert package.stat().st_size < 20 * 2**20


# -- the KubeRay RayJob -------------------------------------------------------------------------


def rayjob_docs():
    docs = list(yaml.safe_load_all((CLUSTER / "rayjob.yaml").read_text()))
    by_kind = {d["kind"]: d for d in docs}
    assert len(by_kind) == len(docs) == 2
    return by_kind["PersistentVolumeClaim"], by_kind["RayJob"]


def rayjob_validator():
    return jsonschema.Draft7Validator(RAYJOB_SCHEMA)


def test_rayjob_is_valid_for_the_kuberay_crd_schema():
    _, job = rayjob_docs()
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in rayjob_validator().iter_errors(job)]
    assert not errors, errors
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"


@pytest.mark.parametrize(
    "mutate, where",
    [
        (lambda s: s["rayClusterSpec"]["workerGroupSpecs"][0].pop("groupName"), "groupName"),
        (lambda s: s["rayClusterSpec"]["workerGroupSpecs"][0].update(minReplicas="2"), "minReplicas"),
        (lambda s: s["rayClusterSpec"]["headGroupSpec"]["rayStartParams"].update({"num-gpus": 0}), "num-gpus"),
        (lambda s: s.update(shutdownAfterJobFinished=True), "shutdownAfterJobFinished"),  # a typo
        (
            lambda s: s["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["volumeMounts"][0].pop(
                "mountPath"
            ),
            "mountPath",
        ),
        (
            lambda s: s["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"][
                "limits"
            ].update(memory="30 GB"),
            "30 GB",
        ),
        (lambda s: s["rayClusterSpec"].update(autoscalerOptions={"upscalingMode": "Fast"}), "Fast"),  # an enum
    ],
)
def test_rayjob_schema_check_catches_mistakes(mutate, where):
    _, job = rayjob_docs()
    mutate(job["spec"])
    errors = list(rayjob_validator().iter_errors(job))
    assert errors and any(where in e.message or where in map(str, e.absolute_path) for e in errors), [
        e.message for e in errors
    ]


def test_rayjob_runs_the_sweep_on_gpu_workers_with_token_auth():
    pvc, job = rayjob_docs()
    spec = job["spec"]
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["authOptions"]["mode"] == "token"
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert spec["submissionMode"] in {"K8sJobMode", "HTTPMode", "InteractiveMode"}
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert all(isinstance(v, str) for v in env["env_vars"].values())

    head = cluster["headGroupSpec"]["template"]["spec"]
    groups = cluster["workerGroupSpecs"]
    pods = [head] + [g["template"]["spec"] for g in groups]
    images = {c["image"] for pod in pods for c in pod["containers"]}
    assert len(images) == 1  # head, workers and the submitter (the head's image) run the same build
    gpus = 0
    for group in groups:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        (container,) = group["template"]["spec"]["containers"]
        requests, limits = container["resources"]["requests"], container["resources"]["limits"]
        assert int(requests["nvidia.com/gpu"]) >= 1 and requests["nvidia.com/gpu"] == limits["nvidia.com/gpu"]
        assert all(QUANTITY.match(str(v)) for v in [*requests.values(), *limits.values()])
        gpus += group["minReplicas"] * int(requests["nvidia.com/gpu"])

    # the results volume: the claim above, mounted at one path on every Ray pod
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    assert QUANTITY.match(pvc["spec"]["resources"]["requests"]["storage"])
    mounts = set()
    for pod in pods:
        (volume,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
        assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
        mounts |= {m["mountPath"] for c in pod["containers"] for m in c["volumeMounts"] if m["name"] == volume["name"]}
    (mount,) = mounts

    # the entrypoint: wait for the workers' GPUs, then a sweep time-ray accepts, writing to the volume
    wait_args, sweep_argv = split_wait_and_sweep(spec["entrypoint"])
    assert float(wait_args[wait_args.index("--gpus") + 1]) == gpus
    args, cfg = check_sweep_command(sweep_argv, root_in_command=IMAGE_HOME)
    assert cfg.resources.use_gpu and Path(args.output).is_relative_to(mount)


def test_dockerfile_builds_the_image_the_rayjob_runs():
    text = (CLUSTER / "Dockerfile").read_text()
    (base,) = re.findall(r"^FROM (\S+)$", text, re.M)
    assert base == load("aws-gpu.yaml")["docker"]["image"]  # the same Ray on both paths
    assert re.search(rf"^WORKDIR {IMAGE_HOME}$", text, re.M)
    copied = {m.split()[-2] for m in re.findall(r"^COPY .+$", text, re.M)}
    assert {"time_ray", "configs", "cluster"} <= copied  # the entrypoint's paths exist in the image
    assert re.search(r"^RUN pip install .*\.$", text, re.M)
    ignored = (CLUSTER / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", ".git", "results"} <= set(ignored)


# -- cluster/wait_for_workers.py ------------------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_wait_for_returns_once_the_gpus_arrive():
    wait = wait_module()
    clock, seen = FakeClock(), []
    offers = iter([{"CPU": 0.0}, {"CPU": 8.0, "GPU": 1.0}, {"CPU": 16.0, "GPU": 2.0}])
    resources = lambda: seen.append(clock()) or next(offers)  # noqa: E731
    assert wait.wait_for(
        resources, gpus=2, cpus=0, timeout_s=60, poll_s=5, sleep=clock.sleep, clock=clock, log=lambda m: None
    )
    assert seen == [0.0, 5.0, 10.0]


def test_wait_for_gives_up_after_the_timeout():
    wait = wait_module()
    clock, logged = FakeClock(), []
    assert not wait.wait_for(
        lambda: {"CPU": 2.0}, gpus=1, cpus=0, timeout_s=30, poll_s=5, sleep=clock.sleep, clock=clock, log=logged.append
    )
    assert clock() == 30.0 and len(logged) == 1 and "waiting for 1 GPUs" in logged[0]  # logged once, not per poll


def test_wait_for_workers_needs_a_command():
    with pytest.raises(SystemExit) as exc:
        wait_module().main(["--gpus", "1"])
    assert exc.value.code == 2
