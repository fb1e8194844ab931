"""Conditional labels from a per-sample metadata field (``label_field``, e.g. Dog CEO's ``breed``): the
vocabulary, the loader's labels, frames with one row per label, snapshots and resume."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

import ganmodels.train as train_mod
from assets.training import load_experiments
from ganmodels.checkpoint import list_checkpoints, load_checkpoint
from ganmodels.data import OTHER_LABEL, LabelVocabulary, count_field_values
from ganmodels.frames import grid_size
from ganmodels.train import TrainConfig, Trainer
from tests.tiny_dataset import tiny_experiment, write_dataset

NET = {"resolution": 32, "width": 8, "latent_dim": 16, "num_classes": "auto"}


def breeds(common: str = "hound") -> Any:
    """Metadata for tiny_dataset: of its 32 dogs (every third sample), 16 pugs, 8 ``common``, 4 akitas and 4
    without a breed (2 with an empty json, 2 with none); the cats carry a breed that must not count."""

    def meta(i: int) -> dict[str, Any] | None:
        if i % 3 == 0:
            return {"breed": "tabby"}
        if i % 3 == 2:
            return None
        j = i // 3
        if j % 8 < 4:
            return {"breed": "pug"}
        if j % 8 < 6:
            return {"breed": common}
        if j % 8 == 6:
            return {"breed": "akita", "author": "x"}
        return {} if j % 16 == 7 else None

    return meta


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("store")
    write_dataset(root, n=96, meta=breeds())
    return root


def config(**overrides: Any) -> TrainConfig:
    spec = tiny_experiment(label_field="breed", label_min_count=5, net=NET, frame_nrow=2) | overrides
    return TrainConfig.from_dict(spec)


def all_labels(data: train_mod.ShardBatches) -> Counter:
    """Every label one epoch of the loader yields (the loader's dataset, unbatched)."""
    return Counter(int(label) for _, label in data.loader.dataset)


# ---- the vocabulary -------------------------------------------------------------------------------------


def test_vocabulary_min_count_other_bucket_and_drop_mode() -> None:
    counts = {"pug": 16, "hound": 8, "beagle": 8, "akita": 4, None: 3, OTHER_LABEL: 2}
    vocab = LabelVocabulary.from_counts("breed", counts, min_count=5, other=True)
    # by count, ties by name; rare values, missing ones and a value named "other" share the last label
    assert vocab.names == ("pug", "beagle", "hound", "other") and vocab.counts == (16, 8, 8, 9)
    assert vocab.dropped == 0
    labels = vocab.field_labels({2: 4})
    assert labels.label(1, b'{"breed": "hound"}') == 2 and labels.label(1, b'{"breed": "akita"}') == 3
    assert labels.label(1, None) == 3 and labels.label(1, b"{}") == 3 and labels.label(2, b'{"breed": "pug"}') == 4

    dropped = LabelVocabulary.from_counts("breed", counts, min_count=5, other=False)
    assert dropped.names == ("pug", "beagle", "hound") and dropped.dropped == 9
    assert dropped.field_labels().label(1, b'{"breed": "akita"}') is None
    assert dropped.field_labels().label(1, None) is None

    # no value frequent enough: everything is "other", or nothing is left to train
    assert LabelVocabulary.from_counts("breed", {None: 5}, min_count=5, other=True).names == ("other",)
    with pytest.raises(ValueError, match=r"no label for label_field 'breed': 1 of 6 .* label_min_count=5"):
        LabelVocabulary.from_counts("breed", {None: 5, "pug": 1}, min_count=5, other=False)
    with pytest.raises(ValueError, match="not an object"):
        labels.label(1, b"[1, 2]")


def test_counts_come_from_the_trained_classes_of_the_shards(store: Path) -> None:
    from pipelines.dataset import load_index
    from pipelines.storage import open_storage

    index = load_index(open_storage(str(store)))
    keys = [s["key"] for s in index.index["splits"]["train"]]
    counts = count_field_values(str(store), keys, "breed", classes=[1])
    assert counts == {"pug": 16, "hound": 8, "akita": 4, None: 4}  # the cats' "tabby" is not counted
    assert count_field_values(str(store), keys, "breed", classes=[0, 1])["tabby"] == 32
    with pytest.raises(RuntimeError, match=r"shard nope\.tar is unreadable"):  # never a partial vocabulary
        count_field_values(str(store), [*keys, "nope.tar"], "breed", classes=[1])


def test_shard_batches_label_samples_by_the_field(store: Path) -> None:
    data, names = train_mod.shard_batches(str(store), None, config(negatives_class="null"), num_workers=0)
    assert names == ["pug", "hound", "other", "null"]  # the negatives class keeps a label of its own, last
    assert all_labels(data) == {0: 16, 1: 8, 2: 8, 3: 32}
    data, names = train_mod.shard_batches(str(store), None, config(label_other=False), num_workers=0)
    assert names == ["pug", "hound"] and all_labels(data) == {0: 16, 1: 8}  # akitas and breedless dogs dropped


def test_config_rules() -> None:
    with pytest.raises(ValueError, match="label_field needs `classes`"):
        config(classes=None)
    with pytest.raises(ValueError, match="num_classes: auto needs label_field"):
        TrainConfig.from_dict(tiny_experiment(net=NET))
    with pytest.raises(ValueError, match="label_min_count must be >= 1"):
        config(label_min_count=0)
    assert config().net.num_classes == 0 and config().to_dict()["label_field"] == "breed"
    assert TrainConfig.from_dict(config().to_dict()) == config()
    with pytest.raises(ValueError, match=r"net.num_classes=2, but the breed vocabulary has 3 labels .*auto"):
        Trainer(config(net={**NET, "num_classes": 2}), [], "unused", class_names=["pug", "hound", "other"])
    with pytest.raises(ValueError, match="needs its label names"):
        Trainer(config(), [], "unused")


# ---- training -------------------------------------------------------------------------------------------


def test_label_run_has_one_frame_row_per_label_and_records_its_vocabulary(store: Path, tmp_path: Path) -> None:
    cfg = config(negatives_class="null", frame_count=1)  # frame_count is derived: labels x frame_nrow
    data, names = train_mod.shard_batches(str(store), None, cfg, num_workers=0, shuffle_buffer=8)
    trainer = Trainer(cfg, data, tmp_path, class_names=names)
    assert trainer.config.net.num_classes == 3 and trainer.negative_label == 3
    assert trainer.frame_labels.tolist() == [0, 0, 1, 1, 2, 2]
    result = trainer.run()
    assert result.step == 2
    with Image.open(tmp_path / "frames" / "step-00000002.png") as im:
        assert im.size == grid_size(6, 32, 32, 2) == (2 * 34 + 2, 3 * 34 + 2)  # 2 per row, 3 rows
    snap = load_checkpoint(list_checkpoints(tmp_path / "generators")[-1][1])
    assert snap["labels"] == ["pug", "hound", "other"] and snap["label_field"] == "breed"
    assert snap["classes"] == ["dog"] and snap["net"]["num_classes"] == 3  # classes: the dataset's, for evaluation
    assert load_checkpoint(result.checkpoint)["labels"] == ["pug", "hound", "other"]

    # a resume derives the same vocabulary from the same dataset: it carries on
    data, names = train_mod.shard_batches(str(store), None, config(negatives_class="null", steps=3), num_workers=0)
    again = Trainer(config(negatives_class="null", steps=3), data, tmp_path, class_names=names).run()
    assert again.resumed_from == 2 and again.step == 3


def test_resume_refuses_a_changed_vocabulary(store: Path, tmp_path: Path) -> None:
    data, names = train_mod.shard_batches(str(store), None, config(), num_workers=0)
    Trainer(config(), data, tmp_path / "run", class_names=names).run()
    changed = tmp_path / "changed"
    write_dataset(changed, n=96, meta=breeds(common="beagle"))
    data, names = train_mod.shard_batches(str(changed), None, config(steps=4), num_workers=0)
    assert names == ["pug", "beagle", "other"]  # as many labels: the net alone would not notice
    trainer = Trainer(config(steps=4), data, tmp_path / "run", class_names=names)
    with pytest.raises(ValueError, match=r"cannot resume from step 2: the data's breed vocabulary changed since "
                       r"\(new: beagle; gone: hound\); train on the checkpoint's dataset version"):  # fmt: skip
        trainer.run()
    assert [s for s, _ in list_checkpoints(tmp_path / "run" / "checkpoints")] == [0, 2]  # nothing overwritten


def test_shipped_dog_breeds_experiment_trains(store: Path, tmp_path: Path) -> None:
    """config/experiments.yaml's dog_breeds, on the tiny dataset's classes and size, for one step."""
    shipped = load_experiments(Path(__file__).resolve().parents[1] / "config" / "experiments.yaml")["dog_breeds"]
    assert shipped["label_field"] == "breed" and shipped["net"]["num_classes"] == "auto"
    small = {"classes": ["dog"], "net": {**shipped["net"], "resolution": 32, "width": 4}, "label_min_count": 5}
    cfg = TrainConfig.from_dict(shipped | small | {"batch_size": 4, "steps": 1, "threads": 1, "frame_every": 1})
    data, names = train_mod.shard_batches(str(store), None, cfg, num_workers=0, shuffle_buffer=8)
    trainer = Trainer(cfg, data, tmp_path, class_names=names)
    assert trainer.run().step == 1 and trainer.config.net.num_classes == len(names) == 3


def test_field_labels_survive_loader_workers(store: Path) -> None:
    """The label mapping travels to DataLoader worker processes (pickled) and gives the same labels there."""
    data, _ = train_mod.shard_batches(str(store), None, config(batch_size=4), num_workers=2, shuffle_buffer=1)
    got = Counter()
    data.loader.dataset.set_epoch(0)
    for _, labels in data.loader:
        got.update(labels.tolist())
    # drop_last: each of the 2 workers may drop a partial batch of up to 3 samples
    assert set(got) == {0, 1, 2} and 32 - 6 <= sum(got.values()) <= 32


@pytest.mark.parametrize("rank", [0, 1])
def test_ranks_must_derive_the_same_vocabulary(rank: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Under torchrun each rank counts the vocabulary itself; if two disagreed (say a shard changed between
    their reads) every rank stops before training, none waits in a collective. (A 2-rank label run itself
    goes through ``python -m ganmodels.train`` like any other; here the process group is simulated.)"""
    names = {0: ["pug", "hound", "other"], 1: ["pug", "beagle", "other"]}

    def all_gather_object(out: list, obj: object) -> None:
        assert obj == names[rank]
        out[:] = [names[0], names[1]]

    fake = SimpleNamespace(
        is_available=lambda: True,
        is_initialized=lambda: True,
        get_world_size=lambda: 2,
        get_rank=lambda: rank,
        all_gather_object=all_gather_object,
    )
    monkeypatch.setattr(train_mod, "dist", fake)
    with pytest.raises(ValueError, match=r"the ranks derived different breed vocabularies: .*'hound'.*'beagle'"):
        Trainer(config(), [], tmp_path, class_names=names[rank])
