"""Worker processes that die with their parent.

A process pool's workers outlive a parent killed with SIGKILL (or by the OOM killer): nothing in
``multiprocessing`` or ``concurrent.futures`` notices, so the workers keep computing, hold memory and keep
the parent's stdout pipe open (DVC then waits on it forever). :func:`die_with_parent` is a pool initializer
that ends the worker when its parent dies; it wraps the pool's own initializer::

    ProcessPoolExecutor(n, mp_context=ctx, initializer=die_with_parent, initargs=(init, *init_args))
    ctx.Pool(n, initializer=die_with_parent, initargs=(init, *init_args))

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
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

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
