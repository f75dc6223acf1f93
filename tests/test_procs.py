"""faenet.procs.run_pool: results in job order or as they complete, worker set-up, errors, in-process runs.

(Workers dying with a killed parent: tests/test_process_cleanup.py.) Forked workers: no imports to wait for.
"""

from __future__ import annotations

import os
import time

import pytest
import torch

from faenet.procs import run_pool, starred

INIT = "none"


def _mark(value: str) -> None:
    global INIT
    INIT = value


def _report(seconds: float) -> tuple[float, int, str, int]:
    time.sleep(seconds)
    return seconds, os.getpid(), INIT, torch.get_num_threads()


def _fail_on_two(x: int) -> int:
    if x == 2:
        raise ValueError(f"job {x} failed")
    return x


def test_ordered_results_come_in_job_order_from_set_up_workers(one_thread):
    jobs = [0.6, 0.0, 0.2]
    out = list(run_pool(_report, jobs, 2, threads=2, initializer=_mark, initargs=("ok",), start_method="fork"))
    assert [i for i, _ in out] == [0, 1, 2] and [r[0] for _, r in out] == jobs
    assert os.getpid() not in {r[1] for _, r in out}  # computed in workers
    assert {r[2] for _, r in out} == {"ok"} and {r[3] for _, r in out} == {2}  # initializer, then torch threads
    assert torch.get_num_threads() == 1  # this process's threads untouched


def test_unordered_results_come_as_they_complete():
    out = list(run_pool(_report, [2.0, 0.0, 0.0], 2, start_method="fork", ordered=False))
    assert sorted(i for i, _ in out) == [0, 1, 2]
    assert out[-1][0] == 0  # the long job, submitted first, arrives last


def test_a_worker_error_is_raised_here():
    with pytest.raises(ValueError, match="job 2 failed"):
        list(run_pool(_fail_on_two, [0, 1, 2, 3], 2, start_method="fork"))


def test_one_worker_runs_in_this_process_on_the_given_threads(one_thread):
    out = list(run_pool(starred(_report), [(0.0,), (0.0,)], 1, threads=3, initializer=_mark, initargs=("x",)))
    assert [i for i, _ in out] == [0, 1]
    assert {r[1] for _, r in out} == {os.getpid()} and {r[3] for _, r in out} == {3}
    assert {r[2] for _, r in out} == {"none"}  # the initializer is for workers
    assert torch.get_num_threads() == 1  # restored
    (_, (_, pid, _, _)), = run_pool(_report, [0.0], 1, inline=False, start_method="fork")
    assert pid != os.getpid()  # inline=False: a pool even for one job
    assert list(run_pool(_report, [], 4)) == []
