"""How ``gan_generator`` starts ``python -m ganmodels.train``: a local subprocess or a Kubernetes pod, one
process or ``torchrun`` over several GPUs, always through Dagster Pipes (rank 0 reports the materialisation).

``mode="subprocess"`` runs the trainer where the step runs: on a laptop, or inside the step's own pod under
``k8s_job_executor`` (:func:`k8s_executor` gives that pod the GPUs). ``mode="k8s"`` keeps the step pod
small and starts a separate training pod with ``dagster_k8s.PipesK8sClient``: its own image, GPUs, service
account, S3 credentials and the shared run-directory volume. One pod per run; several nodes are a
``torchrun`` static rendezvous whose other nodes are started outside this resource (deploy/k8s/README.md).
``dagster-k8s`` is imported only in k8s mode, so the default install does not need it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import dagster as dg
from pydantic import Field

__all__ = ["GPU_RESOURCE", "TRAINING_POD_LABELS", "TrainingLauncher", "gpu_k8s_config", "k8s_executor"]

GPU_RESOURCE = "nvidia.com/gpu"
TRAINING_POD_LABELS = {"app.kubernetes.io/part-of": "gan-pipelines", "app.kubernetes.io/component": "training"}
# GPU node pools are usually tainted so that only pods asking for GPUs land there (GKE and AKS do it for you).
_GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}


def gpu_k8s_config(gpus: int) -> dict[str, Any]:
    """A ``dagster-k8s/config`` value (op tag or ``per_step_k8s_config`` entry) that gives a pod ``gpus`` GPUs."""
    return {
        "container_config": {"resources": {"limits": {GPU_RESOURCE: str(gpus)}}},  # a quantity, as the API returns it
        "pod_spec_config": {"tolerations": [_GPU_TOLERATION]},
    }


class TrainingLauncher(dg.ConfigurableResource):
    """Where and how the trainer runs; ``gan_generator`` hands it the command, environment and Pipes extras."""

    mode: Literal["subprocess", "k8s"] = Field("subprocess", description="local subprocess, or a Kubernetes pod")
    nproc_per_node: int = Field(1, ge=1, description="processes per node (one per GPU); >1 runs under torchrun")
    nnodes: int = Field(1, ge=1, description="nodes; >1 makes this the rank-0 node of a static torchrun rendezvous")
    master_addr: str | None = Field(None, description="address of this (rank-0) node, reachable from the others")
    master_port: int = Field(29500, description="rendezvous port on master_addr")
    image: str | None = Field(None, description="k8s: training image; default $DAGSTER_CURRENT_IMAGE (the step's)")
    namespace: str | None = Field(None, description="k8s: namespace of the training pod; default the current one")
    gpus_per_pod: int = Field(
        0, ge=0, description=f"{GPU_RESOURCE} limit of the pod that trains: the training pod (k8s) or the step's pod"
    )
    service_account: str | None = Field(None, description="k8s: service account of the training pod")
    runs_volume_claim: str | None = Field(
        None, description="k8s: PVC holding the run directories, mounted at the same path as in the step pod"
    )
    runs_mount_path: str = Field("/runs", description="k8s: where runs_volume_claim is mounted ($GAN_RUNS_DIR)")
    env_from_secret: str | None = Field(None, description="k8s: Secret whose keys become env vars (S3 credentials)")

    @classmethod
    def from_env(cls) -> TrainingLauncher:
        """Settings from ``GAN_TRAIN_*`` variables, so a deployment configures training without code changes."""
        env = os.environ
        return cls(
            mode=env.get("GAN_TRAIN_LAUNCHER") or "subprocess",
            nproc_per_node=int(env.get("GAN_TRAIN_NPROC_PER_NODE") or 1),
            nnodes=int(env.get("GAN_TRAIN_NNODES") or 1),
            master_addr=env.get("GAN_TRAIN_MASTER_ADDR") or None,
            image=env.get("GAN_TRAIN_IMAGE") or None,
            namespace=env.get("GAN_TRAIN_NAMESPACE") or None,
            gpus_per_pod=int(env.get("GAN_TRAIN_GPUS_PER_POD") or 0),
            service_account=env.get("GAN_TRAIN_SERVICE_ACCOUNT") or None,
            runs_volume_claim=env.get("GAN_TRAIN_RUNS_CLAIM") or None,
            runs_mount_path=env.get("GAN_RUNS_DIR") or "/runs",
            env_from_secret=env.get("GAN_TRAIN_ENV_SECRET") or None,
        )

    def launch_command(self, command: Sequence[str]) -> list[str]:
        """``command`` (``python -m module ...`` or ``python script ...``) as run on this node: unchanged for one
        process, else under ``python -m torch.distributed.run`` (torchrun without relying on its script's PATH)."""
        if self.nproc_per_node == 1 and self.nnodes == 1:
            return list(command)
        if self.nnodes == 1:
            rendezvous = ["--standalone"]
        elif not self.master_addr:
            raise dg.DagsterInvariantViolationError(
                f"nnodes={self.nnodes} needs master_addr: the address the other nodes reach this rank-0 node at"
            )
        else:  # static rendezvous: this node is rank 0, so the Pipes-connected process is global rank 0
            rendezvous = [
                f"--nnodes={self.nnodes}",
                "--node-rank=0",
                f"--master-addr={self.master_addr}",
                f"--master-port={self.master_port}",
            ]
        python, *rest = command
        return [python, "-m", "torch.distributed.run", *rendezvous, f"--nproc-per-node={self.nproc_per_node}", *rest]

    def pod_spec(self, command: Sequence[str], cwd: str) -> dict[str, Any]:
        """The training pod's spec (``base_pod_spec`` for ``PipesK8sClient``; Pipes adds its env vars)."""
        if self.nnodes > 1:
            raise dg.DagsterInvariantViolationError(
                "mode='k8s' starts one pod: training across nodes is not wired up (deploy/k8s/README.md)"
            )
        image = self.image or os.environ.get("DAGSTER_CURRENT_IMAGE")
        if not image:
            raise dg.DagsterInvariantViolationError("mode='k8s' needs image (or $DAGSTER_CURRENT_IMAGE)")
        container: dict[str, Any] = {
            "name": "train",
            "image": image,
            "command": self.launch_command(command),
            "workingDir": cwd,
            # torch's DataLoader workers and NCCL exchange tensors through /dev/shm, 64 MiB by default in a pod
            "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
        }
        volumes: list[dict[str, Any]] = [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]
        spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container], "volumes": volumes}
        if self.gpus_per_pod:
            container["resources"] = {"limits": {GPU_RESOURCE: str(self.gpus_per_pod)}}
            spec["tolerations"] = [_GPU_TOLERATION]
        if self.runs_volume_claim:
            container["volumeMounts"].append({"name": "runs", "mountPath": self.runs_mount_path})
            volumes.append({"name": "runs", "persistentVolumeClaim": {"claimName": self.runs_volume_claim}})
        if self.env_from_secret:
            container["envFrom"] = [{"secretRef": {"name": self.env_from_secret}}]
        if self.service_account:
            spec["serviceAccountName"] = self.service_account
        return spec

    def run(
        self,
        context: dg.AssetExecutionContext,
        command: Sequence[str],
        env: Mapping[str, str],
        cwd: str,
        extras: Mapping[str, Any],
    ) -> dg.PipesClientCompletedInvocation:
        """Run the trainer to completion through Pipes; a non-zero exit or a failed pod fails the step."""
        if self.mode == "subprocess":
            return dg.PipesSubprocessClient().run(
                command=self.launch_command(command), context=context, env=dict(env), cwd=cwd, extras=dict(extras)
            )
        from dagster_k8s import PipesK8sClient

        return PipesK8sClient().run(
            context=context,
            extras=dict(extras),
            namespace=self.namespace,
            env=dict(env),
            base_pod_meta={"labels": TRAINING_POD_LABELS},
            base_pod_spec=self.pod_spec(command, cwd),
        )


def k8s_executor(launcher: TrainingLauncher) -> dg.ExecutorDefinition:
    """``k8s_job_executor``: every step in its own pod. When training runs in the step's pod (subprocess mode),
    ``gan_generator``'s pod gets the launcher's ``gpus_per_pod`` GPUs; in k8s mode the training pod has them."""
    from dagster_k8s import k8s_job_executor

    if launcher.mode != "subprocess" or not launcher.gpus_per_pod:
        return k8s_job_executor
    return k8s_job_executor.configured(
        {"per_step_k8s_config": {"gan_generator": gpu_k8s_config(launcher.gpus_per_pod)}}, name="k8s"
    )
