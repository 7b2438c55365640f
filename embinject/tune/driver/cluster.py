"""Where a search runs: the resources a trial asks for checked against this machine or the cluster,
starting or joining Ray (an address that does not answer is one error line, not a hang), and the shared
caches warmed once in the driver before any trial starts."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
from pathlib import Path

import torch

from ...errors import ConfigError, disk_full, first_line
from ...fsutil import atomic_write_text
from ...space import SearchFile, trial_config
from ...specs import METHOD_SPECS
from ...train import baseline_perplexity, prepare, release_shared_lms, resolve_device, shared_lm
from .internals import RAY_SYSTEM_CONFIG_ARG, RAY_TOKEN_LOGGER
from .progress import stage

CONNECT_TIMEOUT_S = 10.0  # --address: how long to wait for a cluster before saying it cannot be reached
# Ray lowers its workers' priority (nice +15) so that its own daemons stay responsive. Trials are the work of a
# search: at nice 15 any other busy process on the machine takes the CPU from them (benchmarks.trial_priority: x5.4
# the wall time beside two busy processes). The Ray that a search starts runs trials at the command's priority, so
# `nice -n 10 python -m embinject.tune ...` still lowers a whole search; RAY_worker_niceness, where the user sets
# it, wins; a cluster's nodes decide their own (`RAY_worker_niceness=0 ray start ...`).
LOCAL_RAY_SYSTEM_CONFIG = {"worker_niceness": 0}
RAY_SESSION_FILE = "ray_session.txt"  # in a search's folder while the local Ray it started runs (JSON inside)


def local_shortfalls(search: SearchFile, address: str | None) -> list[str]:
    """What a trial asks for that this machine lacks, one line each naming the key; none with --address (the cluster
    is checked once joined)."""
    r = search.tune.resources
    if address:
        return []
    lacking = []
    cpus = os.cpu_count() or 1
    if r.cpus > cpus:
        lacking.append(f"tune.resources.cpus: a trial asks for {r.cpus:g} CPUs but this machine has {cpus}")
    if r.gpus > 0:
        if torch.cuda.device_count() == 0:
            lacking.append(
                f"tune.resources.gpus: a trial asks for {r.gpus:g} GPU but no GPU is visible here "
                "(set tune.resources.gpus: 0, or pass --address of a cluster with GPUs)"
            )
        elif r.gpus > torch.cuda.device_count():
            lacking.append(
                f"tune.resources.gpus: a trial asks for {r.gpus:g} GPUs but this machine has "
                f"{torch.cuda.device_count()}"
            )
    return lacking


def check_local_resources(search: SearchFile, address: str | None) -> None:
    lacking = local_shortfalls(search, address)
    if lacking:
        raise ConfigError(lacking[0])


def cluster_needs(search: SearchFile) -> str:
    """The dry run's line for a search this machine cannot run (`local_shortfalls`): what a cluster must offer."""
    t = search.tune
    r, n = t.resources, t.max_concurrent_trials
    gpus = torch.cuda.device_count()
    here = f"{os.cpu_count() or 1} CPUs, " + (f"{gpus} GPU{'s' * (gpus > 1)}" if gpus else "no GPU")
    ask = f"{r.cpus:g} CPUs" + (f" and {r.gpus:g} GPU" if r.gpus else "")
    at_once = f"{n * r.cpus:g} CPUs" + (f" and {n * r.gpus:g} GPUs" if r.gpus else "")
    return (
        f"this machine ({here}) cannot run this search, whose trials ask for {ask} each (tune.resources): the "
        f"plan above is a preview. Run it with --address of a Ray cluster that has that for a trial ({n} trials at "
        f"a time take up to {at_once}); started here, the search stops with exit 2"
    )


def check_cluster_resources(search: SearchFile) -> None:
    import ray  # lazy: Ray Tune takes seconds to import, and bad input or --dry-run is answered before it

    total = ray.cluster_resources()
    r = search.tune.resources
    if r.cpus > total.get("CPU", 0):
        raise ConfigError(
            f"tune.resources.cpus: a trial asks for {r.cpus:g} CPUs but the cluster has {total.get('CPU', 0):g}"
        )
    if r.gpus > total.get("GPU", 0):
        raise ConfigError(
            f"tune.resources.gpus: a trial asks for {r.gpus:g} GPUs but the cluster has {total.get('GPU', 0):g}"
        )


def warm_caches(search: SearchFile) -> None:
    """Shared work once, in the driver: model conversion, tokenised windows, the baseline perplexity and each
    encoder's sentence embeddings land in the disk cache trials read. One line per stage, with its seconds."""
    encoders = search.choices("adapter.embedding_model", {None})
    methods = search.choices("method", {search.config.method})
    base = trial_config(search.base, {"method": "baseline", "train.device": "cpu"})
    with stage(f"model {base.model}"):
        shared_lm(base.model, resolve_device(base.train.device))  # converted once (GGUF, hub), then read from the cache
    with stage("data windows and the frozen model's perplexity"):
        baseline_perplexity(prepare(base), base)
    # one warm-up per encoder, through the first searched method whose spec says it reads one
    readers = [s.name for s in METHOD_SPECS.values() if s.needs_encoder and s.name in methods]
    for encoder in sorted(encoders, key=str) if readers else ():
        cfg = trial_config(
            search.base,
            {"method": readers[0], "train.device": "cpu", **({"adapter.embedding_model": encoder} if encoder else {})},
        )
        with stage(f"encoder {cfg.adapter.embedding_model} and its sentence embeddings"):
            baseline_perplexity(prepare(cfg), cfg)
    release_shared_lms()


class _DiskFullTrialTraceback(logging.Filter):
    """A record whose exception is a full disk: Ray would print its whole traceback; the command says it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and disk_full(record.exc_info[1]))


# Ray's loggers that print a whole traceback when the disk fills: a trial's failure, and saving the search's state
DISK_FULL_LOGGERS = ("ray.tune.execution.tune_controller", "ray.tune.execution.experiment_state")


def quiet_disk_full_tracebacks() -> None:
    """A full disk is one line from the command (`error: no space left on the device holding ...`), not Ray's
    tracebacks before it; every other error Ray logs still shows."""
    for name in DISK_FULL_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DiskFullTrialTraceback) for f in logger.filters):
            logger.addFilter(_DiskFullTrialTraceback())


class _TokenAuthOnNotice(logging.Filter):
    """Ray announces on every local start that token authentication is on because a token exists in ~/.ray:
    the secure default, with nothing for the user to do. Ray's warning that authentication is *off* still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


def connect(address: str | None, env: dict, verbose: int) -> Path | None:
    """Start or join Ray before any work. A cluster address that does not answer is one ConfigError
    after a bounded wait, not a hang. Returns the session folder of a local Ray this call started, else None."""
    import ray  # lazy: Ray Tune takes seconds to import, and bad input or --dry-run is answered before it

    if address and address != "auto":
        host, _, port = address.removeprefix("ray://").rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=CONNECT_TIMEOUT_S).close()
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else first_line(exc)
            raise ConfigError(
                f"--address {address}: cannot reach a Ray cluster there ({reason}); start it with "
                "`ray start --head` or pass the address `ray start` printed"
            ) from None
    token_logger = logging.getLogger(RAY_TOKEN_LOGGER)
    if verbose < 2 and not any(isinstance(f, _TokenAuthOnNotice) for f in token_logger.filters):
        token_logger.addFilter(_TokenAuthOnNotice())
    quiet_disk_full_tracebacks()
    starts_ray = not address and not os.environ.get("RAY_ADDRESS") and not ray.is_initialized()
    ray_default_priority = "RAY_worker_niceness" in os.environ  # the user's own setting wins
    where = (
        "started on this machine"
        if starts_ray
        else f"joined at {address or os.environ.get('RAY_ADDRESS') or 'its running session'}"
    )
    try:
        with stage(f"Ray {where}"):
            ray.init(
                address=address,
                include_dashboard=False,
                log_to_driver=verbose >= 2,
                logging_level="WARNING",
                runtime_env={"env_vars": env},
                ignore_reinit_error=True,
                # a copy: Ray writes this session's spilling directory into the dict, which a second search in
                # this process would otherwise pass on (the first session's directory, removed by then)
                **(
                    {RAY_SYSTEM_CONFIG_ARG: dict(LOCAL_RAY_SYSTEM_CONFIG)}
                    if starts_ray and not ray_default_priority
                    else {}
                ),
            )
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        raise ConfigError(f"--address {address}: cannot connect to a Ray cluster ({first_line(exc)})") from None
    if not starts_ray:
        return None
    context = ray.get_runtime_context()
    return Path(context.get_temp_dir()) / context.get_session_name()


# ---- what a killed driver's local Ray leaves running
# Ray's processes share the fate of the driver that started them, except two that the raylet starts, DashboardAgent
# and RuntimeEnvAgent: after a kill -9 of the driver they stay (seen for minutes with Ray 2.60), holding ports and
# memory. The search records its Ray's session folder while it runs; the next search under the same storage path
# (--resume included) stops the Ray processes of a recorded session whose driver is gone, and no other process.


def _started_at(pid: int) -> str | None:
    """A process's start time (clock ticks since boot): with its pid, names that one process, not a later one."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def record_ray_session(exp_dir: Path, session_dir: Path) -> None:
    atomic_write_text(
        exp_dir / RAY_SESSION_FILE,
        json.dumps(
            {
                "session_dir": str(session_dir),
                "host": socket.gethostname(),
                "driver": os.getpid(),
                "driver_started_at": _started_at(os.getpid()),
            }
        ),
    )


def forget_ray_session(exp_dir: Path | None) -> None:
    """The search's Ray has shut down: nothing of it is left to stop."""
    if exp_dir is not None:
        (exp_dir / RAY_SESSION_FILE).unlink(missing_ok=True)


def _of_session(pid: int, session_dir: str) -> bool:
    """A Ray process of this user that belongs to that session: named in its command line (Ray's own daemons) or,
    for a process Ray renamed `ray::...` (agents, workers), holding a file open in the session's folder."""
    proc = Path(f"/proc/{pid}")
    try:
        if proc.stat().st_uid != os.getuid():
            return False
        args = proc.joinpath("cmdline").read_bytes().split(b"\0")
        if any(session_dir.encode() + b"/" in a or a == session_dir.encode() for a in args):
            return True
        if not args[0].startswith(b"ray::"):
            return False
        return any(os.readlink(fd).startswith(session_dir + "/") for fd in proc.joinpath("fd").iterdir())
    except OSError:  # gone meanwhile, or not ours to read
        return False


def stop_ray_leftovers(root: Path) -> list[str]:
    """Stops what the local Ray of a search under `root` left running when its driver was killed; one line per such
    search. A recorded session whose driver still runs (another search, right now) or that another host started (a
    shared storage path) is left alone."""
    lines = []
    if not Path("/proc").is_dir():
        return lines  # no /proc (macOS): neither a driver's liveness nor a session's processes can be told safely
    for record in sorted(root.glob(f"*/{RAY_SESSION_FILE}")):
        try:
            session = json.loads(record.read_text())
            session_dir, driver = str(session["session_dir"]), int(session["driver"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not one this code wrote whole (it writes atomically): nothing it can name safely
        if session.get("host") != socket.gethostname():
            continue  # a search on another machine sharing the storage: its processes are not here to stop
        if _started_at(driver) is not None and _started_at(driver) == session.get("driver_started_at"):
            continue
        stopped = sorted(
            int(p.name)
            for p in Path("/proc").iterdir()
            if p.name.isdigit() and int(p.name) != os.getpid() and _of_session(int(p.name), session_dir)
        )
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGKILL)  # orphans of a dead session with nothing to save; they ignore SIGTERM
            except ProcessLookupError:
                pass
        record.unlink(missing_ok=True)
        if stopped:
            lines.append(
                f"stopped {len(stopped)} Ray process{'es' * (len(stopped) > 1)} (pid "
                f"{', '.join(map(str, stopped))}) that search {record.parent.name} left running when its "
                "driver was killed"
            )
    return lines
