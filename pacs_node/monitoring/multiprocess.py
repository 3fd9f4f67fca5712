"""One metrics directory per node run, shared by the node and its receiver processes.

With ``[node] receive_processes > 1`` the node spawns receiver processes that count
instances and associations too.  prometheus_client's multiprocess mode adds them up:
each process writes its values to memory-mapped files in ``PROMETHEUS_MULTIPROC_DIR``
and ``/metrics`` merges the files of every process, the dead ones' included, so a
counter never goes back when a receiver process is replaced.

prometheus_client picks how values are stored once, when it is first imported, from
that environment variable.  So the variable is set here, by code that never imports
prometheus_client itself, at the two places where a node process starts:

* ``pacs-node serve`` calls :func:`use_private_directory` before it imports the node;
* each receiver process calls :func:`use_directory` first thing (spawned processes
  start a fresh interpreter, and inherit the directory's path as an argument).

Both refuse to run after prometheus_client was imported in single-process mode, which
would silently lose counts.  A node built without a directory (in a test process) counts
in single-process mode: its own counts are exact, extra receivers' are missing (it logs
that).  The directory is fresh (``mkdtemp``: empty at start, never another run's) and
removed when ``serve`` ends; the directories of runs that were killed (their process is
gone) are removed at the next start.  Under systemd they live in ``RuntimeDirectory``,
which systemd empties even after a crash.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
_PREFIX = "pacs-node-metrics-"


def active() -> bool:
    """Whether prometheus_client (imported or not yet) stores values in multiprocess files."""
    module = sys.modules.get("prometheus_client.values")
    if module is None:
        return VARIABLE in os.environ
    return bool(getattr(module.ValueClass, "_multiprocess", False))


def use_directory(path: Path) -> None:
    """Count into ``path`` from now on; call before prometheus_client is imported."""
    if "prometheus_client" in sys.modules and not active():
        raise RuntimeError(f"prometheus_client was imported before {VARIABLE} was set: "
                           "its values would not reach /metrics")
    os.environ[VARIABLE] = str(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


def _remove_abandoned(base: Path) -> None:
    """Remove the directories of earlier runs whose process no longer exists."""
    for path in base.glob(f"{_PREFIX}*"):
        pid = path.name.removeprefix(_PREFIX).split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def use_private_directory() -> Path:
    """A new empty directory for this node run, set as ``PROMETHEUS_MULTIPROC_DIR``.

    Made in ``$RUNTIME_DIRECTORY`` (systemd) or the temporary directory, named after this
    process, after removing those that killed runs left there.
    """
    base = Path(os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or tempfile.gettempdir())
    _remove_abandoned(base)
    path = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=base))
    try:
        use_directory(path)
    except RuntimeError:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return path


def remove(path: Path) -> None:
    """Delete a run's directory once every process of the run has stopped."""
    shutil.rmtree(path, ignore_errors=True)
    if os.environ.get(VARIABLE) == str(path):
        del os.environ[VARIABLE]
