"""MLflow at the edge: the store (`store`), what a search records (`records`) and the journal-backed
writer of a search's runs and registry versions (`tracker`, which sends its journal's records through `apply`; which
version holds the alias champion: `champion`). Nothing below this package imports MLflow."""

from .earlier import earlier_searches
from .records import (
    TIME_SPLIT,
    WALL,
    champion_identity,
    curve_value,
    dataset_record,
    flatten,
    logged_model_name,
    readable,
    source_tags,
)
from .store import (
    check_tracking_uri,
    default_tracking_uri,
    mlflow_global_uris,
    open_store,
    quiet_mlflow,
    registry_uri_for,
    runs_table_url,
    search_from_mlflow,
    tracking_uri_default,
)
from .tracker import (
    JOURNAL_FILE,
    LEGACY_STATE_FILE,
    STATE_FILE,
    SearchTracker,
    read_state_file,
    search_end,
    search_metrics,
    tracker_for,
)

__all__ = [
    "JOURNAL_FILE",
    "LEGACY_STATE_FILE",
    "STATE_FILE",
    "SearchTracker",
    "TIME_SPLIT",
    "WALL",
    "champion_identity",
    "check_tracking_uri",
    "curve_value",
    "dataset_record",
    "earlier_searches",
    "default_tracking_uri",
    "flatten",
    "logged_model_name",
    "mlflow_global_uris",
    "open_store",
    "quiet_mlflow",
    "read_state_file",
    "readable",
    "registry_uri_for",
    "runs_table_url",
    "search_end",
    "search_from_mlflow",
    "search_metrics",
    "source_tags",
    "tracker_for",
    "tracking_uri_default",
]
