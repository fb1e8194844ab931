"""Dagster resources wrapping the data library: storage, the HTTP fetcher, and the sources file."""

import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from assets.settings import default_data_root, default_sources_file
from pipelines.fetch import Fetcher, FetchSettings
from pipelines.fetchpool import default_processes
from pipelines.httpclient import DEFAULT_USER_AGENT, HttpSettings
from pipelines.sources import SourcesFile, load_sources_file
from pipelines.storage import Storage, open_storage


class StorageResource(dg.ConfigurableResource):
    """All pipeline data: ``file:///abs/dir`` (default: ./data) or ``s3://bucket/prefix``.

    S3 credentials come from the standard AWS chain (environment, profile, instance role).
    """

    root_url: str = Field(default_factory=default_data_root)
    endpoint_url: str | None = Field(None, description="S3-compatible endpoint, e.g. http://minio:9000")
    region_name: str | None = None

    def open(self) -> Storage:
        return open_storage(self.root_url, endpoint_url=self.endpoint_url, region_name=self.region_name)


class FetchResource(dg.ConfigurableResource):
    """How politely and how fast to download. Defaults suit public servers."""

    user_agent: str = DEFAULT_USER_AGENT
    concurrency: int = Field(16, ge=1, description="download threads per partition, in all processes together")
    processes: int = Field(
        0,
        ge=0,
        description="processes the downloads are split between, so decoding and hashing use every core; "
        "0 = one per available core, at most 4; 1 = threads in the step's own process",
    )
    per_host_concurrency: int = Field(4, ge=1)
    per_host_rate: float = Field(10.0, description="requests/second per host; 0 = unlimited")
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    download_timeout: float = 60.0
    retries: int = 3
    backoff_factor: float = 0.5
    max_retry_after: float = 30.0
    max_bytes: int = 25 * 1024 * 1024
    max_pixels: int = 50_000_000
    min_side: int = 64
    respect_robots: bool = True
    respect_x_robots_tag: bool = True
    allowed_networks: list[str] | None = Field(
        None,
        description="networks that may be fetched from although not public, e.g. ['192.168.1.0/24'] for a mirror on "
        "the LAN (loopback, private, link-local and other internal addresses are refused otherwise, whatever a listing "
        "or redirect points at); default: $GAN_ALLOWED_NETWORKS (comma-separated), else none",
    )

    def fetcher(self, storage: Storage) -> Fetcher:
        http = HttpSettings(
            user_agent=self.user_agent,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            retries=self.retries,
            backoff_factor=self.backoff_factor,
            max_retry_after=self.max_retry_after,
            pool_size=max(self.concurrency, self.per_host_concurrency),
            allowed_networks=None if self.allowed_networks is None else tuple(self.allowed_networks),
        )
        settings = FetchSettings(
            http=http,
            download_timeout=self.download_timeout,
            max_bytes=self.max_bytes,
            max_pixels=self.max_pixels,
            min_side=self.min_side,
            respect_robots=self.respect_robots,
            respect_x_robots_tag=self.respect_x_robots_tag,
            per_host_concurrency=self.per_host_concurrency,
            per_host_rate=self.per_host_rate,
        )
        return Fetcher(storage, settings)

    def fetch_processes(self) -> int:
        return self.processes or default_processes()


class SourcesResource(dg.ConfigurableResource):
    """The YAML file that declares which sources feed each class (config/sources.yaml by default)."""

    path: str = Field(default_factory=default_sources_file)

    def load(self) -> SourcesFile:
        return load_sources_file(self.path)


class FIDResource(dg.ConfigurableResource):
    """The FID Inception-v3 weights: a file path, else the cache directory, else a download (sha256-checked).

    On an offline machine set ``GAN_FID_WEIGHTS`` to a copy of ``weights-inception-2015-12-05-6726825d.pth``
    (see the README's troubleshooting section).
    """

    weights_path: str | None = Field(None, description="the weights file; default $GAN_FID_WEIGHTS")
    cache_dir: str | None = Field(None, description="where downloads go; default $GAN_FID_WEIGHTS_CACHE or ~/.cache")
    allow_download: bool = Field(True, description="download the weights from the standard URL when missing")
    allow_unofficial_weights: bool | None = Field(
        None,
        description="score with weights whose sha256 is not the official file's (scores marked not comparable); "
        "default $GAN_FID_ALLOW_UNOFFICIAL_WEIGHTS=1",
    )
    device: str = Field("auto", description="'auto' (CUDA when present), 'cpu' or 'cuda:N'")

    def resolve(self) -> Path:
        from ganmodels.inception import resolve_weights

        path = self.weights_path or os.environ.get("GAN_FID_WEIGHTS") or None
        return resolve_weights(path, self.cache_dir, allow_download=self.allow_download)

    def checked(self) -> tuple[Path, str, bool]:
        """``(path, sha256, official)`` of the weights; raises ``UnofficialFIDWeights`` for another file unless
        allowed, and ``FIDWeightsUnavailable`` when there is none."""
        from ganmodels.inception import UNOFFICIAL_ENV_VAR, check_weights

        path = self.resolve()
        allow = self.allow_unofficial_weights
        if allow is None:
            allow = os.environ.get(UNOFFICIAL_ENV_VAR) == "1"
        digest, official = check_weights(path, allow_unofficial=allow)
        return path, digest, official
