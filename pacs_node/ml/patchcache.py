"""Build the patch cache of a set of cases: resumable, in parallel, failures skipped.

:func:`build_cache` gives each case a folder ``<case_id>-<fingerprint>/`` in the
cache (:mod:`pacs_node.ml.patchstore`).  A case whose folder exists is not built
again, so an interrupted build continues where it stopped.  A case that cannot be
built (unreadable volume, no lungs found) is reported in one line, recorded in
``<case_id>-<fingerprint>.failed`` (which later runs report and skip; delete the
file to try that case again) and left out.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from pacs_node.ml.cases import Case
from pacs_node.ml.patchstore import TARGETS_FILE, remove_stale_temporaries, write_case
from pacs_node.ml.preprocess import FrontEndConfig
from pacs_node.ml.samples import SampleParams, build_case, case_fingerprint

log = logging.getLogger(__name__)

FAILED_SUFFIX = ".failed"


def case_path(cache_dir: Path, case: Case, front_end: FrontEndConfig, params: SampleParams, seed: int) -> Path:
    """The folder of a case's cached samples."""
    return Path(cache_dir) / f"{case.case_id}-{case_fingerprint(case, front_end, params, seed)}"


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _build_one(args: tuple[Case, FrontEndConfig, SampleParams, int, str]) -> tuple[str, str | None]:
    case, front_end, params, seed, path = args
    torch.set_num_threads(1)
    try:
        write_case(Path(path), build_case(case, front_end, params, seed))
    except Exception as exc:  # a bad study must not stop the others; reported by the caller
        return case.case_id, _one_line(exc)
    return case.case_id, None


def build_cache(cases: Sequence[Case], cache_dir: Path, front_end: FrontEndConfig, params: SampleParams,
                seed: int, workers: int = 2, say: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Build the cached samples of the cases not cached yet.

    Parameters
    ----------
    cases
        The cases (:func:`pacs_node.ml.cases.list_cases`).
    cache_dir
        The cache folder (created).
    front_end, params, seed
        What shapes the samples (they name the case folders, see
        :func:`pacs_node.ml.samples.fingerprint`).
    workers
        Processes building cases (1: in this process).
    say
        Called with one line per event (default: the module logger).

    Returns
    -------
    dict[str, Path]
        Case id to case folder for every case that is cached, in the order of ``cases``;
        cases that failed (now or in an earlier run) are left out.
    """
    say = say or log.info
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(cache_dir)
    paths = {c.case_id: case_path(cache_dir, c, front_end, params, seed) for c in cases}
    todo, failed_before = [], 0
    for c in cases:
        path = paths[c.case_id]
        marker = path.with_name(path.name + FAILED_SUFFIX)
        if (path / TARGETS_FILE).is_file():
            continue
        if marker.is_file():
            failed_before += 1
            say(f"event=case_skipped case={c.case_id} reason=failed_before error={marker.read_text().strip()!r} "
                f"retry=delete_{marker.name}")
            continue
        todo.append((c, front_end, params, seed, str(path)))
    say(f"event=cache_build cache={cache_dir} to_build={len(todo)} cached={len(cases) - len(todo) - failed_before} "
        f"failed_before={failed_before} workers={min(workers, max(1, len(todo)))}")
    done = 0

    def report(case_id: str, err: str | None) -> None:
        nonlocal done
        done += 1
        path = paths[case_id]
        if err:
            path.with_name(path.name + FAILED_SUFFIX).write_text(err + "\n")
            say(f"event=case_failed case={case_id} n={done}/{len(todo)} error={err!r}")
        else:
            say(f"event=case_cached case={case_id} n={done}/{len(todo)}")

    if workers > 1 and len(todo) > 1:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(min(workers, len(todo)), maxtasksperchild=8) as pool:
            for case_id, err in pool.imap_unordered(_build_one, todo):
                report(case_id, err)
    else:
        for item in todo:
            report(*_build_one(item))
    return {cid: p for cid, p in paths.items() if (p / TARGETS_FILE).is_file()}
