"""Scale-out without a cluster: the training launcher really runs torchrun (2 CPU processes, gloo) through
Pipes; its Kubernetes pod spec, the GPU step Job and every manifest in deploy/k8s/ are checked against the
real Kubernetes schema (kubernetes-validate); the Helm values against the dagster chart's values.schema.json."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import dagster as dg
import dagster_k8s
import kubernetes_validate
import pytest
import yaml
from dagster_k8s.job import DagsterK8sJobConfig, UserDefinedDagsterK8sConfig, construct_dagster_k8s_job
from dagster_k8s.pipes import build_pod_body
from kubernetes.client import ApiClient

from assets.launch import GPU_RESOURCE, TRAINING_POD_LABELS, TrainingLauncher, gpu_k8s_config, k8s_executor
from assets.resources import StorageResource
from assets.settings import project_dir
from assets.training import build_training_assets
from tests.tiny_dataset import tiny_experiment, write_dataset

K8S_VERSION = "1.33"  # validated against the newest bundled schema not newer than this
DEPLOY = project_dir() / "deploy" / "k8s"

IMAGE = "registry.example.com/gan-pipelines:0.1.0"
TINY = tiny_experiment()


def _k8s_dict(obj: Any) -> dict[str, Any]:
    """A kubernetes client model as the API server would receive it (camelCase JSON)."""
    return ApiClient().sanitize_for_serialization(obj)


def _validate(manifest: dict[str, Any]) -> None:
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)  # strict: unknown fields are errors


def _manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path.name != "values.yaml":
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _values() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "values.yaml").read_text())


def _code_deployment() -> dict[str, Any]:
    [deployment] = _values()["dagster-user-deployments"]["deployments"]
    return deployment


# ---- the launcher, for real and as a pod --------------------------------------------------------------


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    root = tmp_path / "data"
    write_dataset(root)
    experiments = tmp_path / "experiments.yaml"
    experiments.write_text(yaml.safe_dump({"tiny": TINY}))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("GAN_S3_ENDPOINT_URL", raising=False)
    return {"root": root, "asset": build_training_assets(experiments)[0]}


def _train(tiny: dict[str, Any], instance: dg.DagsterInstance, launcher: TrainingLauncher) -> list[str]:
    """Materialise the tiny experiment with ``launcher``; the run's log messages."""
    result = dg.materialize(
        [tiny["asset"]],
        partition_key="tiny",
        instance=instance,
        resources={"storage": StorageResource(root_url=tiny["root"].as_uri()), "training_launcher": launcher},
        run_config={"ops": {"gan_generator": {"config": {"workers": 0}}}},
    )
    assert result.success
    [mat] = result.asset_materializations_for_node("gan_generator")
    assert mat.metadata["steps"].value == 2 and mat.metadata["model"].value.endswith(".pt")
    assert mat.tags["dagster/data_version"] == mat.metadata["checkpoint_sha256"].value
    return [e.user_message for e in instance.all_logs(result.run_id) if e.user_message]


def test_torchrun_two_processes_through_pipes(tiny, instance):
    logs = _train(tiny, instance, TrainingLauncher(nproc_per_node=2))
    assert any("2 rank(s)" in m for m in logs), logs  # rank 0 of a world of 2 reported through Pipes


@pytest.mark.parametrize(
    ("launcher", "expected"),
    [
        (TrainingLauncher(), ["py", "-m", "ganmodels.train", "--out", "o"]),
        (
            TrainingLauncher(nproc_per_node=4),
            ["py", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4", "-m", "ganmodels.train"],
        ),
        (
            TrainingLauncher(nproc_per_node=8, nnodes=2, master_addr="gan-train-0.gan", master_port=29400),
            [
                "py",
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--node-rank=0",
                "--master-addr=gan-train-0.gan",
                "--master-port=29400",
                "--nproc-per-node=8",
                "-m",
                "ganmodels.train",
            ],
        ),
    ],
)
def test_launch_command(launcher: TrainingLauncher, expected: list[str]):
    command = launcher.launch_command(["py", "-m", "ganmodels.train", "--out", "o"])
    assert command[: len(expected)] == expected and command[-2:] == ["--out", "o"]


def test_launcher_refuses_what_it_cannot_run():
    with pytest.raises(dg.DagsterInvariantViolationError, match="master_addr"):
        TrainingLauncher(nnodes=2).launch_command(["py", "-m", "ganmodels.train"])
    with pytest.raises(dg.DagsterInvariantViolationError, match="one pod"):
        TrainingLauncher(mode="k8s", image=IMAGE, nnodes=2, master_addr="x").pod_spec(["py"], "/app")
    with pytest.raises(dg.DagsterInvariantViolationError, match="image"):
        TrainingLauncher(mode="k8s").pod_spec(["py"], "/app")


def _training_pod(launcher: TrainingLauncher, env: dict[str, str]) -> dict[str, Any]:
    """The pod PipesK8sClient would create, built by dagster-k8s' own function with Pipes' variables."""
    pipes_env = {"DAGSTER_PIPES_CONTEXT": "e30=", "DAGSTER_PIPES_MESSAGES": "e30="}
    command = [sys.executable, "-m", "ganmodels.train", "--config", "/runs/tiny/v1-abc/config.yaml"]
    body = build_pod_body(
        pod_name="dagster-abc123-gan-generator",
        image=None,
        command=None,
        env_vars={**pipes_env, **env},
        base_pod_meta={"labels": TRAINING_POD_LABELS},
        base_pod_spec=launcher.pod_spec(command, "/app"),
    )
    return {"apiVersion": "v1", "kind": "Pod", **_k8s_dict(body)}


def test_training_pod_is_valid_kubernetes():
    launcher = TrainingLauncher(
        mode="k8s",
        image=IMAGE,
        nproc_per_node=2,
        gpus_per_pod=2,
        service_account="dagster",
        runs_volume_claim="gan-runs",
        env_from_secret="gan-s3",
    )
    pod = _training_pod(launcher, {"PYTHONPATH": "/app"})
    _validate(pod)
    spec = pod["spec"]
    [container] = spec["containers"]
    assert container["image"] == IMAGE and container["workingDir"] == "/app"
    assert container["resources"]["limits"] == {GPU_RESOURCE: "2"}
    assert {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert container["command"][:5] == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
    ]
    assert container["command"][5:7] == ["-m", "ganmodels.train"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["PYTHONPATH"] == "/app" and "DAGSTER_PIPES_CONTEXT" in env
    assert container["envFrom"] == [{"secretRef": {"name": "gan-s3"}}]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert mounts == {"runs": "/runs", "dshm": "/dev/shm"}
    assert volumes["runs"]["persistentVolumeClaim"] == {"claimName": "gan-runs"}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory"}
    assert spec["serviceAccountName"] == "dagster" and spec["restartPolicy"] == "Never"

    # a CPU pod asks for no GPU and tolerates no GPU taint
    cpu = _training_pod(TrainingLauncher(mode="k8s", image=IMAGE), {})["spec"]
    assert "resources" not in cpu["containers"][0] and "tolerations" not in cpu


def test_k8s_mode_runs_the_pod_command_through_pipes(tiny, instance, monkeypatch):
    """mode="k8s" end to end with the cluster replaced: the pod's command runs here, through Pipes."""
    calls = []

    def fake_run(self, *, context, extras, namespace, env, base_pod_meta, base_pod_spec):
        calls.append(
            {"namespace": namespace, "env": env, "extras": extras, "meta": base_pod_meta, "spec": base_pod_spec}
        )
        [container] = base_pod_spec["containers"]
        return dg.PipesSubprocessClient().run(
            context=context, command=container["command"], env=env, cwd=container["workingDir"], extras=extras
        )

    monkeypatch.setattr(dagster_k8s.PipesK8sClient, "run", fake_run)
    _train(tiny, instance, TrainingLauncher(mode="k8s", image=IMAGE, namespace="gan", gpus_per_pod=1))
    [call] = calls
    assert call["namespace"] == "gan" and call["extras"] == {"experiment": "tiny", "dataset_version": "v1"}
    assert call["meta"] == {"labels": TRAINING_POD_LABELS}
    assert call["spec"]["containers"][0]["resources"]["limits"] == {GPU_RESOURCE: "1"}
    assert str(project_dir()) in call["env"]["PYTHONPATH"]


# ---- the step executor --------------------------------------------------------------------------------


def test_k8s_executor_gives_the_training_step_gpus():
    launcher = TrainingLauncher(nproc_per_node=4, gpus_per_pod=4)
    executor = k8s_executor(launcher)
    assert executor.name == "k8s"
    config = executor.apply_config_mapping({}).value["config"]
    step = config["per_step_k8s_config"]["gan_generator"]
    assert step["container_config"] == gpu_k8s_config(4)["container_config"]

    # The step Job dagster-k8s would create for gan_generator with that config is valid Kubernetes.
    job_config = DagsterK8sJobConfig(
        job_image=IMAGE,
        dagster_home="/opt/dagster/dagster_home",
        image_pull_policy="IfNotPresent",
        image_pull_secrets=[],
        service_account_name="dagster",
        instance_config_map="dagster-instance",
        postgres_password_secret="dagster-postgresql-secret",
        env_config_maps=[],
        env_secrets=[s["name"] for s in _code_deployment()["envSecrets"]],
        env_vars=[],
        volume_mounts=_code_deployment()["volumeMounts"],
        volumes=_code_deployment()["volumes"],
        labels={},
        resources={},
        scheduler_name=None,
        security_context={},
    )
    job = construct_dagster_k8s_job(
        job_config,
        args=["dagster", "api", "execute_step"],
        job_name="dagster-step-0123456789abcdef",
        user_defined_k8s_config=UserDefinedDagsterK8sConfig.from_dict(step),
        component="step_worker",
    )
    manifest = {"apiVersion": "batch/v1", "kind": "Job", **_k8s_dict(job)}
    _validate(manifest)
    pod = manifest["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {GPU_RESOURCE: "4"}
    assert pod["tolerations"] == gpu_k8s_config(4)["pod_spec_config"]["tolerations"]

    # no GPUs asked when the training pod has them (k8s mode) or none are configured
    for other in (TrainingLauncher(mode="k8s", gpus_per_pod=4), TrainingLauncher()):
        assert k8s_executor(other) is dagster_k8s.k8s_job_executor


def test_code_location_loads_with_the_k8s_executor(tiny):
    defs = dg.Definitions(
        assets=[tiny["asset"]],
        executor=k8s_executor(TrainingLauncher(gpus_per_pod=1)),
        resources={"storage": StorageResource(root_url=tiny["root"].as_uri()), "training_launcher": TrainingLauncher()},
    )
    defs.validate_loadable(defs)
    assert defs.resolve_implicit_global_asset_job_def().executor_def.name == "k8s"


# ---- deploy/k8s ---------------------------------------------------------------------------------------


def test_manifests_are_valid_kubernetes():
    docs = _manifests()
    assert {d["kind"] for d in docs} >= {"Namespace", "PersistentVolumeClaim", "Secret"}
    for doc in docs:
        _validate(doc)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "gan", doc["metadata"]["name"]


def test_values_match_the_code_and_the_manifests(monkeypatch):
    values = _values()
    deployment = _code_deployment()
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert deployment["codeServerArgs"] == ["-m", "assets.definitions"]
    assert (project_dir() / "assets" / "definitions.py").exists()
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": True}
    coordinator = values["dagsterDaemon"]["runCoordinator"]
    assert coordinator["enabled"] and coordinator["type"] == "QueuedRunCoordinator"

    env = deployment["env"]
    assert env["GAN_EXECUTOR"] == "k8s"
    by_kind = {(d["kind"], d["metadata"]["name"]) for d in _manifests()}
    claims = {v["persistentVolumeClaim"]["claimName"] for v in deployment["volumes"]}
    assert {("PersistentVolumeClaim", c) for c in claims | {env["GAN_TRAIN_RUNS_CLAIM"]}} <= by_kind
    secrets = {s["name"] for s in deployment["envSecrets"]} | {env["GAN_TRAIN_ENV_SECRET"]}
    assert {("Secret", s) for s in secrets} <= by_kind
    [mount] = deployment["volumeMounts"]
    assert mount["mountPath"] == env["GAN_RUNS_DIR"]

    # The launcher the code location builds from that env trains where the run directories are.
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("GAN_TRAIN_LAUNCHER", "k8s")
    monkeypatch.setenv("DAGSTER_CURRENT_IMAGE", IMAGE)
    pod = _training_pod(TrainingLauncher.from_env(), {})
    _validate(pod)
    [container] = pod["spec"]["containers"]
    assert {"name": "runs", "mountPath": mount["mountPath"]} in container["volumeMounts"]
    assert container["image"] == IMAGE

    # The Kubernetes pieces of the code server (volumes, mounts, resources, secrets) form a valid pod.
    _validate(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": deployment["name"], "namespace": "gan"},
            "spec": {
                "volumes": deployment["volumes"],
                "containers": [
                    {
                        "name": "code-server",
                        "image": f"{deployment['image']['repository']}:{deployment['image']['tag']}",
                        "volumeMounts": deployment["volumeMounts"],
                        "resources": deployment["resources"],
                        "envFrom": [{"secretRef": s} for s in deployment["envSecrets"]],
                        "env": [{"name": k, "value": v} for k, v in env.items()],
                    }
                ],
            },
        }
    )
