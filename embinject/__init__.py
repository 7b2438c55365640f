"""embinject: search for the best small adapter of a frozen language model (see README.md; layers in pyproject.toml).

The Python API (`embinject.api`, docs/python-api.md) is here: `embinject.search(spec)` runs a search,
`embinject.load_search(folder)` reads one back, both as a `SearchResult`. `import embinject` stays light all the
same: every command, `embinject --help` and each Ray worker import this package, and the API module brings Ray
Tune's driver, MLflow and pandas with it. So `api` is imported here, at the top, as a module whose code runs on first
use (`_RunOnFirstUse`): `embinject.search` is `embinject.api.search`, run once asked for.
"""

import importlib.util
import sys
import types

from .errors import ConfigError

API = ("search", "load_search", "SearchResult", "Champion")
__all__ = [*API, "ConfigError", "api"]


class _RunOnFirstUse(types.ModuleType):
    """A module whose code runs when one of its names is first asked for. Its own dunder attributes (`__file__`,
    `__spec__`, ...) are there from the start and run nothing: `inspect` (which torch calls while it imports) and
    pickle probe every module in `sys.modules` for them. (The standard library's LazyLoader runs the module on any
    attribute, those probes included, which ran it halfway through another module's import.)"""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        self.__class__ = types.ModuleType
        try:
            self.__spec__.loader.exec_module(self)
        except BaseException:
            self.__class__ = _RunOnFirstUse  # as an import that failed: asked again, it runs again
            raise
        return getattr(self, name)


# The import of the API module, made here; its code runs on first use (`_RunOnFirstUse`).
api = sys.modules.get(f"{__name__}.api")
if api is None:
    api = importlib.util.module_from_spec(importlib.util.find_spec(f"{__name__}.api"))
    api.__class__ = _RunOnFirstUse
    sys.modules[api.__name__] = api


def __getattr__(name: str):
    if name in API:
        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(API))
