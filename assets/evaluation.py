"""``gan_evaluation`` (FID/KID over training steps, and the HTML report) and ``training_timelapse``.

Both are partitioned by experiment like ``gan_generator`` and read the run its latest materialisation
reports (metadata ``run_dir``, ``dataset_version``, ``checkpoint_sha256``), so a score always belongs to
the checkpoint and dataset version it names, also after a newer dataset version has appeared. The
evaluation runs after the time-lapse, whose video goes into its report.

Automation (:data:`ON_NEW_DATA_VERSION`): ``AutomationCondition.eager()`` with "a parent was updated"
replaced by "a parent's data version changed". A new checkpoint (a new sha256) re-runs that experiment's
time-lapse and evaluation; re-materialising ``gan_generator`` with nothing changed reports the same data
version and re-runs nothing, nor does a new ``code_version`` (it marks the asset stale in the UI). The
``automation`` sensor that evaluates these conditions is on by default.

Honest numbers: without FID weights the evaluation skips FID/KID and says so (a warning in the summary,
the report and the checks, never a number); weights whose sha256 is not the official file's are refused
unless the user opts in, and their scores are then marked not comparable; the real-image count stands
beside every score, with a warning below :data:`ganmodels.report.MEANINGFUL_IMAGES`.

Data versions come from content: the evaluation's is a hash of the checkpoint sha256, the dataset
version, the FID weights and the evaluation settings (the inputs that determine the scores); the
time-lapse's is a hash of the frame files and the render settings.
"""

import hashlib
import io
import json
import math
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from PIL import Image
from pydantic import Field

from assets.metadata import latest_metadata, png_markdown
from assets.resources import FIDResource, StorageResource
from pipelines.dataset import index_key, load_index
from pipelines.storage import Storage, upload_file

if TYPE_CHECKING:  # imported when the asset runs: loading the definitions needs no torch
    from ganmodels.evaluate import Evaluator, MemorizationCheck

__all__ = ["ON_NEW_DATA_VERSION", "EvaluationConfig", "TimelapseConfig", "build_evaluation_assets"]

GENERATOR = dg.AssetKey("gan_generator")
TIMELAPSE = dg.AssetKey("training_timelapse")
EVALUATION = dg.AssetKey("gan_evaluation")

#: eager(), except that a parent counts as updated only when its data version changed (module docstring).
ON_NEW_DATA_VERSION = (
    dg.AutomationCondition.eager()
    .replace("newly_updated", dg.AutomationCondition.data_version_changed())
    .with_label("eager_on_new_data_version")
)


class EvaluationConfig(dg.Config):
    """Settings left unset are the ones this experiment's last evaluation used, else the defaults
    (:data:`DEFAULT_SETTINGS`): an automated run keeps what the user last chose, so its cached scores are
    reused and one curve never mixes sample sizes."""

    num_samples: int | None = Field(
        None, ge=2, description="generated images per checkpoint (default 1000; published FIDs use 50,000)"
    )
    batch_size: int = Field(50, ge=1, description="images per Inception forward pass")
    kid_subsets: int | None = Field(None, ge=1, description="default 100")
    kid_subset_size: int | None = Field(
        None, ge=2, description="default 1000; clipped to the number of real and generated images"
    )
    seed: int | None = Field(None, description="default 0")
    all_checkpoints: bool = Field(True, description="score every saved step (the FID curve), not just the last")
    memorization_train_samples: int | None = Field(
        None,
        ge=0,
        description="training images (split over the classes) the final samples are checked against for copies; "
        "their features are extracted once per dataset version; default 2000, 0 turns the check off",
    )


#: The settings an automated run reuses when neither the run config nor an earlier evaluation sets them.
DEFAULT_SETTINGS = {
    "num_samples": 1000,
    "kid_subsets": 100,
    "kid_subset_size": 1000,
    "seed": 0,
    "memorization_train_samples": 2000,
}


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
        "dataset_samples": dg.MetadataValue.path(store.uri(samples_key(version))),
        "run_dir": dg.MetadataValue.path(str(gen["run_dir"])),
    }


def samples_key(version: str) -> str:
    return f"datasets/versions/{version}/samples.parquet"


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:24]


def timelapse_key(experiment: str, checkpoint_sha256: str, suffix: str) -> str:
    return f"timelapse/{experiment}/{checkpoint_sha256}{suffix}"


def report_key(experiment: str, name: str) -> str:
    """``reports/<experiment>/<checkpoint sha256>.html``, or ``latest.html``."""
    return f"reports/{experiment}/{name}.html"


def _identity_settings(context: dg.AssetExecutionContext, config: EvaluationConfig) -> dict[str, int]:
    """Each setting of :data:`DEFAULT_SETTINGS` from the run config, else from the partition's last evaluation
    (its ``eval_settings``), else the default."""
    previous = latest_metadata(context, EVALUATION)
    recorded = previous.metadata.get("eval_settings") if previous is not None else None
    last = recorded.value if recorded is not None and isinstance(recorded.value, dict) else {}
    chosen = config.model_dump()
    return {k: chosen[k] if chosen[k] is not None else int(last.get(k, v)) for k, v in DEFAULT_SETTINGS.items()}


def _counts_by_source(store: Storage, version: str) -> dict[str, dict[str, int]]:
    """Split -> source -> images, from the dataset's samples table (the index counts only classes)."""
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(store.get_bytes(samples_key(version))), columns=["split", "source"])
    counts: dict[str, Counter] = {}
    for row in table.to_pylist():
        counts.setdefault(row["split"], Counter())[row["source"]] += 1
    return {split: dict(sorted(c.items())) for split, c in sorted(counts.items())}


def _final_frame(run_dir: Path, step: int) -> bytes | None:
    """The progress frame of the final step (the fixed noise batch): the report's sample grid."""
    from ganmodels.frames import frame_path

    path = frame_path(run_dir / "frames", step)
    return path.read_bytes() if path.is_file() else None


def _timelapse_video(context: dg.AssetExecutionContext, store: Storage, gen: dict) -> bytes | None:
    """The MP4 of the partition's time-lapse when it shows this very checkpoint, else None (said in the report)."""
    mat = latest_metadata(context, TIMELAPSE)
    shown = mat.metadata.get("checkpoint_sha256") if mat is not None else None
    if shown is None or shown.value != gen["checkpoint_sha256"]:
        return None
    key = timelapse_key(context.partition_key, gen["checkpoint_sha256"], ".mp4")
    return store.get_bytes(key) if store.exists(key) else None


def build_evaluation_assets(partitions: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    """``gan_evaluation`` and ``training_timelapse`` over the experiments' partitions."""

    @dg.asset(
        name="gan_evaluation",
        deps=[GENERATOR, TIMELAPSE],
        partitions_def=partitions,
        code_version="3",
        group_name="evaluate",
        kinds={"pytorch", "html"},
        automation_condition=ON_NEW_DATA_VERSION,
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
        """FID, KID and precision/recall of the experiment's generator against the holdout split of the dataset
        version it was trained on, at every saved step (the FID curve) and for each class of a conditional
        model; the final samples' copy rate against the training images with a grid of their nearest ones;
        and a self-contained HTML report (``reports/<experiment>/<checkpoint sha256>.html`` and ``latest.html``)."""
        from ganmodels.evaluate import GRID_NEIGHBOURS, EvalSettings, Evaluator, list_snapshots
        from ganmodels.inception import FIDWeightsUnavailable, UnofficialFIDWeights, load_inception
        from ganmodels.report import ReportInputs, render_report, report_warnings, scores_plot_png, summary_line

        experiment = context.partition_key
        gen = _generator_metadata(context)
        store = storage.open()
        index = load_index(store, gen["dataset_version"])
        settings = EvalSettings(**_identity_settings(context, config), batch_size=config.batch_size, device=fid.device)
        skipped: str | None = None
        how = ""  # how to get the weights, when skipped
        weights_sha: str | None = None
        official = False
        try:
            weights, weights_sha, official = fid.checked()
        except FIDWeightsUnavailable as e:
            skipped, how = "no FID Inception weights on this machine (GAN_FID_WEIGHTS unset, none cached)", str(e)
            context.log.warning(f"FID skipped: {e}")
        except UnofficialFIDWeights as e:
            raise dg.Failure(str(e)) from None
        evaluator = Evaluator(
            store,
            index,
            load_inception(weights) if weights_sha else None,
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
        last = scores[-1]
        memo, memo_note = None, ""
        if skipped:
            memo_note = f"skipped: {skipped}"
        elif settings.memorization_train_samples == 0:
            memo_note = "off (memorization_train_samples is 0)"
        else:
            memo = evaluator.memorization(*snapshots[-1])
            if memo is None:
                memo_note = f"skipped: fewer than {GRID_NEIGHBOURS} training images of {', '.join(last.classes)}"

        inputs = ReportInputs(
            experiment=experiment,
            scores=[s.to_dict() for s in scores],
            fid_skipped=skipped,
            fid_weights_sha256=weights_sha,
            samples_per_s=float(gen["images_per_s"]) if gen.get("images_per_s") is not None else None,
            samples_png=_final_frame(run_dir, final_step),
            timelapse_mp4=_timelapse_video(context, store, gen),
            dataset_version=index.version,
            counts_by_class=index.counts,
            counts_by_source=_counts_by_source(store, index.version),
            config=gen.get("experiment_config") or {},
            lineage={k: str(v.value) for k, v in _lineage(store, gen).items() if isinstance(v.value, str)},
            notes=[how] if how else [],
            memorization=memo.to_dict() if memo is not None else None,
            memorization_png=memo.grid_png if memo is not None else None,
            memorization_skipped=memo_note,
        )
        summary, warnings = summary_line(inputs), report_warnings(inputs)
        report_uri = store.uri(report_key(experiment, gen["checkpoint_sha256"]))
        page = render_report(inputs).encode()
        store.put_bytes(report_key(experiment, gen["checkpoint_sha256"]), page)
        store.put_bytes(report_key(experiment, "latest"), page)
        latest_uri = store.uri(report_key(experiment, "latest"))
        context.log.info(f"report: {report_uri}")
        metadata: dict[str, object] = {
            "summary": dg.MetadataValue.text(summary),
            "report": dg.MetadataValue.path(report_uri),
            "report_latest": dg.MetadataValue.path(latest_uri),
        }
        if last.fid is not None:  # one series per sample count and weights: a history plot never mixes them
            series = f"({last.num_samples} samples{'' if official else ', unofficial weights'})"
            metadata[f"fid {series}"] = dg.MetadataValue.float(last.fid)
            metadata[f"kid {series}"] = dg.MetadataValue.float(last.kid)
            metadata["kid_std"] = dg.MetadataValue.float(last.kid_std)
            if last.precision is not None:
                metadata[f"precision {series}"] = dg.MetadataValue.float(last.precision)
                metadata[f"recall {series}"] = dg.MetadataValue.float(last.recall)
        metadata.update(
            {
                "fid_status": dg.MetadataValue.text(
                    "skipped" if skipped else ("official weights" if official else "unofficial weights: not comparable")
                ),
                "num_samples": dg.MetadataValue.int(last.num_samples),
                "num_real": dg.MetadataValue.int(last.num_real),
                "kid_subset_size": dg.MetadataValue.int(last.kid_subset_size),
                "diversity": dg.MetadataValue.float(_finite(last.diversity)),
                "real_diversity": dg.MetadataValue.float(_finite(last.real_diversity)),
                "scored_now": dg.MetadataValue.int(sum(not s.cached for s in scores)),
                "eval_settings": dg.MetadataValue.json({k: getattr(settings, k) for k in DEFAULT_SETTINGS}),
                **_lineage(store, gen),
                "fid_weights_sha256": dg.MetadataValue.text(weights_sha or "none"),
            }
        )
        if warnings:
            metadata["warnings"] = dg.MetadataValue.md("\n".join(f"- {w}" for w in warnings))
        if last.per_class:
            metadata["per_class"] = dg.MetadataValue.json(last.per_class)
        plot = scores_plot_png(inputs.scores, f"{experiment}: scores over steps")
        if plot is not None:
            metadata["scores_over_steps"] = png_markdown(plot, "FID and KID over steps")
        metadata["scores"] = dg.MetadataValue.json(list(inputs.scores))
        if not skipped:
            metadata["real_stats"] = dg.MetadataValue.json(  # reused: stored by an earlier evaluation
                {
                    c: {"key": store.uri(evaluator.real_key(c)), "reused": evaluator.real_reused.get(c, True)}
                    for c in last.classes
                }
            )
        if memo is None:
            metadata["memorization_status"] = dg.MetadataValue.text(memo_note)
        else:
            metadata.update(_memorization_metadata(store, evaluator, memo, official))
        checks = _checks(scores, skipped)
        version = _digest(
            {"checkpoint": gen["checkpoint_sha256"], "dataset": index.version, "weights": weights_sha, **vars(settings)}
        )
        context.log.info(f"{experiment}: {summary}")
        return dg.MaterializeResult(metadata=metadata, check_results=checks, data_version=dg.DataVersion(version))

    @dg.asset(
        name="training_timelapse",
        deps=[GENERATOR],
        partitions_def=partitions,
        code_version="1",
        group_name="evaluate",
        kinds={"video"},
        automation_condition=ON_NEW_DATA_VERSION,
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
        for suffix, path in ((".mp4", result.mp4_path), (".gif", result.gif_path)):
            upload_file(store, path, timelapse_key(context.partition_key, gen["checkpoint_sha256"], suffix))
        version = _digest({"frames": [(s, file_sha256(p)) for s, p in frames], **config.model_dump()})
        prefix = timelapse_key(context.partition_key, gen["checkpoint_sha256"], "")
        video = store.uri(prefix + ".mp4")
        metadata = {
            "summary": dg.MetadataValue.text(
                f"{result.frame_count} frames, steps {frames[0][0]}..{frames[-1][0]}, {result.duration_s:.1f} s"
            ),
            "video": dg.MetadataValue.path(video),
            "gif": dg.MetadataValue.path(
                store.uri(timelapse_key(context.partition_key, gen["checkpoint_sha256"], ".gif"))
            ),
            "duration_s": dg.MetadataValue.float(result.duration_s),
            "frame_count": dg.MetadataValue.int(result.frame_count),
            "frames_skipped": dg.MetadataValue.int(result.skipped),
            "fps": dg.MetadataValue.float(result.fps),
            "size": dg.MetadataValue.text(f"{result.width}x{result.height}"),
            "steps": dg.MetadataValue.text(f"{frames[0][0]}..{frames[-1][0]}"),
            **_lineage(store, gen),
        }
        metadata["preview"] = _thumbnail(result.preview.copy(), "last frame")
        sha, steps = gen["checkpoint_sha256"], int(gen["steps"])
        metadata.update(latent_media(store, context.partition_key, sha, run_dir, steps))
        return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(version))

    return [gan_evaluation, training_timelapse]


def _finite(value: float | None) -> float:
    return value if value is not None and math.isfinite(value) else math.nan


def _memorization_metadata(
    store: Storage, evaluator: "Evaluator", memo: "MemorizationCheck", official: bool
) -> dict[str, dg.MetadataValue]:
    """The copy rate (named with its counts, like the FID), its holdout reference, the grid and the features."""
    series = f"({memo.num_samples} samples, {memo.num_train} train{'' if official else ', unofficial weights'})"
    return {
        "memorization_status": dg.MetadataValue.text(
            f"step {memo.step}: {memo.copy_rate:.1%} of samples inside a training image's nearest-neighbour ball "
            f"(real holdout images: {memo.holdout_copy_rate:.1%})"
        ),
        f"copy_rate {series}": dg.MetadataValue.float(memo.copy_rate),
        "holdout_copy_rate": dg.MetadataValue.float(memo.holdout_copy_rate),
        "memorization_train": dg.MetadataValue.int(memo.num_train),
        "memorization": png_markdown(
            memo.grid_png, "most copy-like samples, each followed by its nearest training images"
        ),
        "train_stats": dg.MetadataValue.json(
            {
                c: {"key": store.uri(evaluator.train_key(c)), "reused": evaluator.train_reused.get(c, True)}
                for c in memo.classes
            }
        ),
    }


def _checks(scores: list, skipped: str | None) -> list[dg.AssetCheckResult]:
    """``scores_finite`` and ``beats_step_zero``; both warn (not pass) when FID was skipped."""
    last, first = scores[-1], scores[0]
    if skipped:
        note = {"skipped": "FID skipped: no FID weights (see the materialisation's report)"}
        return [
            dg.AssetCheckResult(
                check_name=name,
                passed=False,
                severity=dg.AssetCheckSeverity.WARN,
                metadata=note,
                description=note["skipped"],
            )
            for name in ("scores_finite", "beats_step_zero")
        ]
    finite = all(math.isfinite(v) for v in (last.fid, last.kid, last.kid_std))
    return [
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


def _thumbnail(image: Image.Image, caption: str) -> dg.MetadataValue:
    """At most 256 px, scaled by nearest neighbour (pixels stay pixels), as a markdown preview."""
    image.thumbnail((256, 256), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return png_markdown(buf.getvalue(), caption)


#: The truncation grids beside the time-lapse (psi: share of the normal's mass kept per latent; 1 = none).
LATENT_PSIS = (1.0, 0.7, 0.5)


def latent_media(
    store: Storage, experiment: str, checkpoint_sha256: str, run_dir: Path, step: int
) -> dict[str, dg.MetadataValue]:
    """The final snapshot's latent interpolation clip and truncation grids, as ``training_timelapse`` shows.

    Rendered into ``<run dir>/timelapse/`` at a CPU-cheap size (8 walks of 4 keyframes x 12 frames, 256 px: a
    second or two for the shipped nets), uploaded beside the time-lapse as
    ``timelapse/<experiment>/<sha256>-interpolation.mp4`` and ``...-truncation-psi0.70.png``; returns their
    metadata: paths, psi values, each grid's sample diversity, the grids' row labels and a preview.
    """
    from ganmodels.checkpoint import checkpoint_path
    from ganmodels.latents import render_snapshot

    snapshot = checkpoint_path(run_dir / "generators", step)
    if not snapshot.is_file():
        raise dg.Failure(f"no generator snapshot of step {step} in {run_dir}/generators: cannot render its latents")
    media = render_snapshot(snapshot, run_dir / "timelapse", psis=LATENT_PSIS, steps=12, size=256)
    clip_key = timelapse_key(experiment, checkpoint_sha256, "-interpolation.mp4")
    upload_file(store, media.clip.clip.mp4_path, clip_key)
    grids = {}
    for grid in media.grids:
        key = timelapse_key(experiment, checkpoint_sha256, f"-truncation-psi{grid.psi:.2f}.png")
        upload_file(store, grid.path, key)
        grids[f"{grid.psi:g}"] = store.uri(key)
    smallest = min(media.grids, key=lambda g: g.psi)
    with Image.open(smallest.path) as im:
        preview = _thumbnail(im.convert("RGB"), f"truncation psi {smallest.psi:g}")
    metadata = {
        "interpolation_video": dg.MetadataValue.path(store.uri(clip_key)),
        "interpolation_frames": dg.MetadataValue.int(media.clip.clip.frame_count),
        "truncation_psi": dg.MetadataValue.json(list(LATENT_PSIS)),
        "truncation_grids": dg.MetadataValue.json(grids),
        "truncation_diversity": dg.MetadataValue.json({f"{g.psi:g}": g.diversity for g in media.grids}),
        "truncation_preview": preview,
    }
    if media.clip.labels is not None:  # conditional: the grids have one row per label, in this order
        metadata["truncation_rows"] = dg.MetadataValue.json(media.label_names)
    return metadata
