"""The sources file: which sources feed each class, validated before anything is fetched."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipelines.sources.base import Source
from pipelines.sources.dog_ceo import DogCeoSource
from pipelines.sources.local import LocalDirSource, UrlListSource
from pipelines.sources.openverse import OpenverseSource
from pipelines.sources.picsum import PicsumSource
from pipelines.sources.xyz_tiles import XyzTilesSource

CLASSES = ("dogs", "null", "satellite")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    max_new: int | None = Field(None, ge=0, description="images per partition; default: the file's max_new_per_source")


class DogCeoSpec(_Spec):
    kind: Literal["dog_ceo"]
    base_url: str = "https://dog.ceo/api"
    breeds: list[str] = []


class PicsumSpec(_Spec):
    kind: Literal["picsum"]
    base_url: str = "https://picsum.photos"
    size: int = Field(512, ge=16, le=5000)


class OpenverseSpec(_Spec):
    kind: Literal["openverse"]
    base_url: str = "https://api.openverse.org/v1"
    queries: list[str] = ["cat", "office", "street", "kitchen", "landscape"]
    license_type: str | None = None
    page_size: int = Field(20, ge=1, le=500)
    max_pages: int = Field(50, ge=1)


class XyzTilesSpec(_Spec):
    kind: Literal["xyz_tiles"]
    provider: str | None = None
    url_template: str | None = None
    bbox: tuple[float, float, float, float]
    zooms: list[int] = Field(min_length=1)
    order: Literal["spread", "scan"] = "spread"
    license: str | None = None
    attribution: str | None = None


class UrlListSpec(_Spec):
    kind: Literal["url_list"]
    path: str
    license: str | None = None


class LocalDirSpec(_Spec):
    kind: Literal["local_dir"]
    path: str
    license: str | None = None


SourceSpec = Annotated[
    DogCeoSpec | PicsumSpec | OpenverseSpec | XyzTilesSpec | UrlListSpec | LocalDirSpec, Field(discriminator="kind")
]


class SourcesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_new_per_source: int = Field(100, ge=0)
    classes: dict[Literal["dogs", "null", "satellite"], list[SourceSpec]]

    @model_validator(mode="before")
    @classmethod
    def _null_key(cls, data: object) -> object:
        """YAML reads a bare ``null:`` key as None; users mean the class called "null"."""
        if isinstance(data, dict) and isinstance(data.get("classes"), dict) and None in data["classes"]:
            classes = dict(data["classes"])
            classes["null"] = classes.pop(None)
            data = {**data, "classes": classes}
        return data

    @model_validator(mode="after")
    def _unique_names(self) -> SourcesFile:
        for cls, specs in self.classes.items():
            names = [s.name for s in specs]
            dupes = {n for n in names if names.count(n) > 1}
            if dupes:
                raise ValueError(f"class {cls!r}: source names must be unique, repeated: {sorted(dupes)}")
        return self

    def sources(self, class_name: str, base_dir: Path | None = None) -> list[tuple[Source, int]]:
        """The sources of a class, built, each with its per-partition quota."""
        out: list[tuple[Source, int]] = []
        for spec in self.classes.get(class_name, []):  # type: ignore[call-overload]
            quota = spec.max_new if spec.max_new is not None else self.max_new_per_source
            out.append((build_source(spec, base_dir), quota))
        return out


def _resolve(path: str, base_dir: Path | None) -> str:
    p = Path(path).expanduser()
    return str(p if p.is_absolute() or base_dir is None else base_dir / p)


def build_source(spec: _Spec, base_dir: Path | None = None) -> Source:
    fields = spec.model_dump(exclude={"kind", "max_new"})
    if isinstance(spec, UrlListSpec | LocalDirSpec):
        fields["path"] = _resolve(spec.path, base_dir)
    builders: dict[type, type] = {
        DogCeoSpec: DogCeoSource,
        PicsumSpec: PicsumSource,
        OpenverseSpec: OpenverseSource,
        XyzTilesSpec: XyzTilesSource,
        UrlListSpec: UrlListSource,
        LocalDirSpec: LocalDirSource,
    }
    return builders[type(spec)](**fields)


def load_sources_file(path: str | Path) -> SourcesFile:
    """Parse and validate a sources YAML file; errors name the file and the offending field."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ValueError(f"cannot read sources file {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ValueError(f"sources file {path} is not valid YAML: {e}") from e
    try:
        return SourcesFile.model_validate(data)
    except ValidationError as e:
        raise ValueError(f"sources file {path} is invalid:\n{e}") from e
