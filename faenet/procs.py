"""Worker processes that die with their parent.

A process pool's workers outlive a parent killed with SIGKILL (or by the OOM killer): nothing in
``multiprocessing`` or ``concurrent.futures`` notices, so the workers keep computing, hold memory and keep
the parent's stdout pipe open (DVC then waits on it forever). :func:`die_with_parent` is a pool initializer
that ends the worker when its parent dies; it wraps the pool's own initializer::

    ProcessPoolExecutor(n, mp_context=ctx, initializer=die_with_parent, initargs=(init, *init_args))
    ctx.Pool(n, initializer=die_with_parent, initargs=(init, *init_args))

:func:`run_pool` is the project's one way to run independent jobs in worker processes (every stage and data
generator uses it): die-with-parent workers, a start method, torch threads per worker, a progress bar, results
streamed in job order or as they complete, and the same call running the jobs in this process for one worker.

Mechanism: on Linux, ``prctl(PR_SET_PDEATHSIG, SIGKILL)``: the kernel kills the worker when its parent
exits, however it exits. Elsewhere (or if prctl fails) a daemon thread polls ``os.getppid()`` and exits
the worker when it changes (the worker was reparented: its parent is gone).

This holds for the ``fork`` and ``spawn`` start methods, whose workers are children of the process that
created the pool. A ``forkserver`` worker is a child of the server, which stays alive while its workers
do; there a thread waits on multiprocessing's parent sentinel (a pipe at EOF once the pool's creator is gone).
Caveat: on Linux the "parent" of PR_SET_PDEATHSIG is the *thread* that started the worker, so create the
pool and submit to it from a thread that outlives the pool (the main thread, as every pool in this project
does).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

J = TypeVar("J")
R = TypeVar("R")

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL_SECONDS = 0.5  # fallback watcher: a worker outlives its parent by at most this long


def die_with_parent(initializer: Callable[..., object] | None = None, *initargs: Any) -> None:
    """Pool initializer: make this worker die with its parent, then run ``initializer(*initargs)``.

    Called in the parent process itself (no pool), it only runs ``initializer``.
    """
    parent = multiprocessing.parent_process()
    if parent is not None and parent.pid is not None:
        ref = os.getppid()
        if ref == parent.pid:  # fork, spawn
            if not _set_pdeathsig():
                _watch(lambda: _wait_reparented(ref))
            if os.getppid() != ref:  # the parent died before prctl took effect: the signal never comes
                os._exit(1)
        elif not _alive(parent.pid):
            os._exit(1)  # reparented already: the pool's creator died before this worker got here
        else:
            # forkserver: the server lives while any of its workers does, so its death signals nothing; watch
            # the creator through multiprocessing's sentinel pipe instead (at EOF once the creator is gone).
            _watch(parent.join)
    if initializer is not None:
        initializer(*initargs)


def _set_pdeathsig() -> bool:
    """Ask the kernel to SIGKILL this process when its parent exits; False if not available (non-Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _wait_reparented(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(POLL_SECONDS)


def _watch(wait_for_parent_death: Callable[[], object]) -> None:
    def watch() -> None:
        wait_for_parent_death()
        os._exit(1)  # no cleanup: the parent that would collect this worker's results is gone

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def starred(fn: Callable[..., R]) -> Callable[[tuple[Any, ...]], R]:
    """``fn`` taking one tuple of arguments (a job of :func:`run_pool`): ``starred(f)((a, b)) == f(a, b)``;
    picklable when ``fn`` is."""
    return functools.partial(_call_starred, fn)


def _call_starred(fn: Callable[..., R], args: tuple[Any, ...]) -> R:
    return fn(*args)


def _init_worker(threads: int | None, initializer: Callable[..., object] | None, *initargs: Any) -> None:
    """Worker set-up of :func:`run_pool` (after :func:`die_with_parent`): torch threads, then ``initializer``."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    if initializer is not None:
        initializer(*initargs)


def run_pool(fn: Callable[[J], R], jobs: Sequence[J], workers: int, *, threads: int | None = None,
             initializer: Callable[..., object] | None = None, initargs: tuple[Any, ...] = (),
             start_method: str = "spawn", ordered: bool = True, inline: bool = True, desc: str | None = None,
             unit: str = "job", label: Callable[[J], str] | None = None) -> Iterator[tuple[int, R]]:
    """Yield ``(index, fn(jobs[index]))`` for every job, computed by ``min(workers, len(jobs))`` processes.

    - Workers die with this process (:func:`die_with_parent`), then set ``threads`` torch threads (None: leave
      torch's default) and run ``initializer(*initargs)``.
    - ``start_method``: ``"spawn"`` (default: forking a process that has started torch/OpenMP threads can
      hang) or ``"fork"`` where workers must inherit warm caches; ``"fork"`` falls back to spawn where the
      platform lacks it.
    - ``ordered``: results in job order (a result waits for those before it); else as they complete.
      Jobs are submitted in the order given: put the longest first.
    - ``inline``: with at most one worker, run the jobs in this process (no pickling, no start-up; ``threads``
      applies for the duration, ``initializer`` is not run). ``inline=False`` always uses a pool.
    - ``desc``: show a tqdm progress bar with this title (None: no bar); ``label(job)`` is shown beside it as each
      result arrives. The bar starts after the pool: tqdm's monitor thread must not exist when workers fork.

    A worker's exception is raised here, unchanged; the jobs not started yet are then cancelled (as they are when
    the caller stops iterating early).
    """
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from tqdm.auto import tqdm

    workers = min(int(workers), len(jobs))
    if not jobs:
        return
    if workers <= 1 and inline:
        yield from _run_inline(fn, jobs, threads, desc, unit, label)
        return
    method = start_method if start_method in mp.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(max(1, workers), mp_context=mp.get_context(method), initializer=die_with_parent,
                             initargs=(_init_worker, threads, initializer, *initargs)) as pool:
        futures = [pool.submit(fn, job) for job in jobs]
        index = {f: i for i, f in enumerate(futures)}
        bar = tqdm(total=len(jobs), desc=desc, unit=unit, disable=desc is None)
        try:
            if ordered:
                done = (f.result() for f in futures)
                for i, res in enumerate(done):
                    yield _tick(bar, label, jobs, i, res)
            else:
                pending = set(futures)
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in sorted(finished, key=index.__getitem__):
                        yield _tick(bar, label, jobs, index[f], f.result())
        except BaseException:
            pool.shutdown(cancel_futures=True)  # a failed job, Ctrl-C, or the caller stopped: start nothing more
            raise
        finally:
            bar.close()


def _tick(bar: Any, label: Callable[[Any], str] | None, jobs: Sequence[Any], i: int, res: R) -> tuple[int, R]:
    if label is not None:
        bar.set_postfix_str(label(jobs[i]), refresh=False)
    bar.update()
    return i, res


def _run_inline(fn: Callable[[J], R], jobs: Sequence[J], threads: int | None, desc: str | None, unit: str,
                label: Callable[[J], str] | None) -> Iterator[tuple[int, R]]:
    from tqdm.auto import tqdm

    before = None
    if threads is not None:
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(threads)
    bar = tqdm(total=len(jobs), desc=desc, unit=unit, disable=desc is None)
    try:
        for i, job in enumerate(jobs):
            if label is not None:
                bar.set_postfix_str(label(job), refresh=False)
            res = fn(job)
            bar.update()
            yield i, res
    finally:
        bar.close()
        if before is not None:
            import torch

            torch.set_num_threads(before)
