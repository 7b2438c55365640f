"""One search call and the plans made for it before any work (`SearchRun`): what the driver's steps pass down."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ...space import SearchFile
from ...tracking import default_tracking_uri
from ..worker.pack_names import PackPlan
from .warm import WarmStart


@dataclasses.dataclass(frozen=True)
class SearchRun:
    """One search call and its plans, each made once before any work: the search file, where and how it runs, how
    `tune.pack` resolves (`pack`: None where `auto` on GPUs measures the largest trial's memory first, once Ray is up),
    whether --resume hands Ray its saved state (`restoring`), and the earlier searches it starts from (`warm`)."""

    search: SearchFile
    address: str | None = None
    resume: bool = False
    verbose: int = 1
    # the champion takes the registered model's alias `champion` whether or not it beats its holder
    promote: bool = False
    pack: PackPlan | None = None
    restoring: bool = False
    warm: WarmStart = dataclasses.field(default_factory=WarmStart)

    @property
    def storage(self) -> Path:
        return Path(self.search.tune.storage_path)

    @property
    def tracking_uri(self) -> str:
        return self.search.mlflow.tracking_uri or default_tracking_uri(self.storage)

    @property
    def artifact_root(self) -> Path:
        return self.storage / "mlartifacts"
