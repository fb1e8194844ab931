"""``gan_evaluation`` (FID/KID over training steps) and ``training_timelapse`` (the progress video).

Both are partitioned by experiment like ``gan_generator`` and read the run its latest materialisation
reports (metadata ``run_dir``, ``dataset_version``, ``checkpoint_sha256``), so a score always belongs to
the checkpoint and dataset version it names, also after a newer dataset version has appeared.

Automation: both carry ``AutomationCondition.eager()``: they run when their experiment's
``gan_generator`` partition is (re-)materialised, and only then. A new evaluation ``code_version`` marks
only ``gan_evaluation`` stale (visible in the UI) without launching anything by itself. The
``model_automation`` sensor that evaluates those conditions is on by default.

Data versions come from content: the evaluation's is a hash of the checkpoint sha256, the dataset
version, the FID weights and the evaluation settings (the inputs that determine the scores); the
time-lapse's is a hash of the frame files and the render settings.
"""

import hashlib
import io
import json
import math
from pathlib import Path

import dagster as dg
from PIL import Image
from pydantic import Field

from assets.metadata import latest_metadata, png_markdown
from assets.resources import FIDResource, StorageResource
from pipelines.dataset import index_key, load_index
from pipelines.storage import Storage, upload_file

__all__ = ["EvaluationConfig", "TimelapseConfig", "build_evaluation_assets"]

GENERATOR = dg.AssetKey("gan_generator")


class EvaluationConfig(dg.Config):
    num_samples: int = Field(1000, ge=2, description="generated images per checkpoint (published FIDs use 50,000)")
    batch_size: int = Field(50, ge=1, description="images per Inception forward pass")
    kid_subsets: int = Field(100, ge=1)
    kid_subset_size: int = Field(1000, ge=2, description="clipped to the number of real and generated images")
    seed: int = 0
    all_checkpoints: bool = Field(True, description="score every saved step (the FID curve), not just the last")


class TimelapseConfig(dg.Config):
    size: int = Field(512, ge=16, description="longer side of the video in pixels (nearest-neighbour scaling)")
    fps: float = Field(10.0, gt=0)
    max_seconds: float | None = Field(None, gt=0, description="cap the length by evenly dropping frames")
    gif_size: int = Field(256, ge=16, description="longer side of the GIF")


def _generator_metadata(context: dg.AssetExecutionContext) -> dict:
    """The metadata of the partition's latest ``gan_generator`` materialisation (raw values)."""
    mat = latest_metadata(context, GENERATOR)
    if mat is None:
        raise dg.Failure(f"gan_generator[{context.partition_key}] has not been materialised yet")
    return {k: v.value for k, v in mat.metadata.items()}


def _lineage(store: Storage, gen: dict) -> dict[str, dg.MetadataValue]:
    """Where a result comes from: the checkpoint, and the dataset whose samples table lists every URL."""
    version = gen["dataset_version"]
    return {
        "checkpoint_sha256": dg.MetadataValue.text(gen["checkpoint_sha256"]),
        "checkpoint_step": dg.MetadataValue.int(int(gen["steps"])),
        "model": dg.MetadataValue.path(str(gen.get("model", gen["checkpoint"]))),
        "dataset_version": dg.MetadataValue.text(version),
        "dataset_index": dg.MetadataValue.path(store.uri(index_key(version))),
        "dataset_samples": dg.MetadataValue.path(store.uri(f"datasets/versions/{version}/samples.parquet")),
        "run_dir": dg.MetadataValue.path(str(gen["run_dir"])),
    }


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:24]


def build_evaluation_assets(partitions: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    """``gan_evaluation`` and ``training_timelapse`` over the experiments' partitions."""

    @dg.asset(
        name="gan_evaluation",
        deps=[GENERATOR],
        partitions_def=partitions,
        code_version="1",
        group_name="evaluate",
        kinds={"pytorch"},
        automation_condition=dg.AutomationCondition.eager(),
        check_specs=[
            dg.AssetCheckSpec("scores_finite", asset="gan_evaluation", description="FID and KID are finite numbers"),
            dg.AssetCheckSpec(
                "beats_step_zero",
                asset="gan_evaluation",
                description="the trained generator's FID is lower than its own untrained (step 0) generator's",
            ),
        ],
    )
    def gan_evaluation(
        context: dg.AssetExecutionContext, config: EvaluationConfig, storage: StorageResource, fid: FIDResource
    ) -> dg.MaterializeResult:
        """FID and KID of the experiment's generator against the holdout split of the dataset version it was
        trained on, at every saved step (the FID curve) and for each class of a conditional model."""
        from ganmodels.checkpoint import file_sha256
        from ganmodels.evaluate import EvalSettings, Evaluator, fid_curve_png, list_snapshots
        from ganmodels.inception import load_inception

        gen = _generator_metadata(context)
        store = storage.open()
        index = load_index(store, gen["dataset_version"])
        settings = EvalSettings(
            num_samples=config.num_samples,
            batch_size=config.batch_size,
            kid_subsets=config.kid_subsets,
            kid_subset_size=config.kid_subset_size,
            seed=config.seed,
            device=fid.device,
        )
        weights = fid.resolve()
        weights_sha = file_sha256(weights)
        evaluator = Evaluator(
            store,
            index,
            load_inception(weights),
            weights_sha,
            settings,
            endpoint_url=storage.endpoint_url,
            progress=context.log.info,
        )
        final_step = int(gen["steps"])
        run_dir = Path(gen["run_dir"])
        snapshots = [(s, p) for s, p in list_snapshots(run_dir) if s <= final_step]
        if not snapshots or snapshots[-1][0] != final_step:
            raise dg.Failure(f"{run_dir}: no generator snapshot of the final step {final_step} to evaluate")
        if not config.all_checkpoints:
            snapshots = [snapshots[0], snapshots[-1]] if len(snapshots) > 1 else snapshots
        scores = [evaluator.score(step, path) for step, path in snapshots]
        last, first = scores[-1], scores[0]

        metadata: dict[str, object] = {
            "fid": dg.MetadataValue.float(last.fid),
            "kid": dg.MetadataValue.float(last.kid),
            "kid_std": dg.MetadataValue.float(last.kid_std),
            "num_samples": dg.MetadataValue.int(last.num_samples),
            "num_real": dg.MetadataValue.int(last.num_real),
            "kid_subset_size": dg.MetadataValue.int(last.kid_subset_size),
            **_lineage(store, gen),
            "fid_weights_sha256": dg.MetadataValue.text(weights_sha),
            "real_stats": dg.MetadataValue.json(  # reused: stored by an earlier evaluation of this dataset version
                {
                    c: {"key": store.uri(evaluator.real_key(c)), "reused": evaluator.real_reused.get(c, True)}
                    for c in last.classes
                }
            ),
            "scores": dg.MetadataValue.json([s.to_dict() for s in scores]),
            "scored_now": dg.MetadataValue.int(sum(not s.cached for s in scores)),
            "fid_over_steps": png_markdown(fid_curve_png(scores, context.partition_key), "FID over steps"),
        }
        if last.per_class:
            metadata["per_class"] = dg.MetadataValue.json(last.per_class)
        finite = all(math.isfinite(v) for v in (last.fid, last.kid, last.kid_std))
        checks = [
            dg.AssetCheckResult(
                check_name="scores_finite",
                passed=finite,
                metadata={"fid": last.fid, "kid": last.kid, "kid_std": last.kid_std},
            ),
            dg.AssetCheckResult(
                check_name="beats_step_zero",
                passed=first.step == 0 and last.step > 0 and last.fid < first.fid,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"fid_step_0": first.fid if first.step == 0 else math.nan, "fid_final": last.fid},
            ),
        ]
        version = _digest(
            {"checkpoint": gen["checkpoint_sha256"], "dataset": index.version, "weights": weights_sha, **vars(settings)}
        )
        context.log.info(f"{context.partition_key}: FID {last.fid:.3f}, KID {last.kid:.5f} at step {last.step}")
        return dg.MaterializeResult(metadata=metadata, check_results=checks, data_version=dg.DataVersion(version))

    @dg.asset(
        name="training_timelapse",
        deps=[GENERATOR],
        partitions_def=partitions,
        code_version="1",
        group_name="evaluate",
        kinds={"video"},
        automation_condition=dg.AutomationCondition.eager(),
    )
    def training_timelapse(
        context: dg.AssetExecutionContext, config: TimelapseConfig, storage: StorageResource
    ) -> dg.MaterializeResult:
        """The generator's progress on a fixed noise batch as an H.264 MP4 and a GIF (one frame per saved
        step, scaled up by nearest neighbour, step number drawn on each)."""
        from ganmodels.checkpoint import file_sha256
        from ganmodels.timelapse import list_frames, render_timelapse

        gen = _generator_metadata(context)
        store = storage.open()
        run_dir = Path(gen["run_dir"])
        frames = [(s, p) for s, p in list_frames(run_dir / "frames") if s <= int(gen["steps"])]
        if not frames:
            raise dg.Failure(f"{run_dir}/frames holds no progress frames: set frame_every > 0 in the experiment")
        out = run_dir / "timelapse"
        out.mkdir(exist_ok=True)
        result = render_timelapse(
            frames,
            mp4_path=out / "timelapse.mp4",
            gif_path=out / "timelapse.gif",
            size=config.size,
            fps=config.fps,
            max_seconds=config.max_seconds,
            gif_size=config.gif_size,
        )
        prefix = f"timelapse/{context.partition_key}/{gen['checkpoint_sha256']}"
        for suffix, path in ((".mp4", result.mp4_path), (".gif", result.gif_path)):
            upload_file(store, path, prefix + suffix)
        version = _digest({"frames": [(s, file_sha256(p)) for s, p in frames], **config.model_dump()})
        metadata = {
            "video": dg.MetadataValue.path(store.uri(prefix + ".mp4")),
            "gif": dg.MetadataValue.path(store.uri(prefix + ".gif")),
            "duration_s": dg.MetadataValue.float(result.duration_s),
            "frame_count": dg.MetadataValue.int(result.frame_count),
            "frames_skipped": dg.MetadataValue.int(result.skipped),
            "fps": dg.MetadataValue.float(result.fps),
            "size": dg.MetadataValue.text(f"{result.width}x{result.height}"),
            "steps": dg.MetadataValue.text(f"{frames[0][0]}..{frames[-1][0]}"),
            **_lineage(store, gen),
        }
        thumb = result.preview.copy()
        thumb.thumbnail((256, 256), Image.Resampling.NEAREST)
        buf = io.BytesIO()
        thumb.save(buf, format="PNG")
        metadata["preview"] = png_markdown(buf.getvalue(), "last frame")
        return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(version))

    return [gan_evaluation, training_timelapse]
