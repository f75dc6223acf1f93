"""Pool workers die with their parent (faenet.procs.die_with_parent).

Each case starts a parent Python process that opens one kind of pool (ProcessPoolExecutor / multiprocessing
Pool; fork / spawn / forkserver; the getppid fallback; faenet.procs.run_pool; the project's pools, which all
go through run_pool, their task swapped for a slow one that prints its pid), waits until every worker runs a
task, SIGKILLs the parent and checks that no process it started (workers, forkserver, multiprocessing's
resource tracker) is alive 5 s later.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GRACE_SECONDS = 5.0
START_TIMEOUT = 120.0  # parent start-up plus its workers' imports (torch in some), on a busy machine
N_WORKERS = 2

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads process trees and states from /proc (Linux)")

# Top level stays light: spawned workers import this file as __mp_main__ to find `slow` and `mark`.
PARENT = textwrap.dedent('''
    import os
    import sys
    import time
    from pathlib import Path
    from types import SimpleNamespace

    INIT = "none"


    def mark(value):
        global INIT
        INIT = value


    def slow(*args, **kwargs):
        os.write(1, f"WORKER {os.getpid()} init={INIT}\\n".encode())  # one write: workers share the pipe
        time.sleep(300)


    class StubSpec:
        def trained(self):
            return False


    def main(kind, tmp):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        import faenet.procs
        from faenet.procs import die_with_parent

        n = 2
        if kind.endswith("-fallback"):  # the portable path: no prctl, a thread watching os.getppid()
            faenet.procs._set_pdeathsig = lambda: False
            kind = kind[:-len("-fallback")]
        if kind.startswith("executor-"):
            ctx = mp.get_context(kind.split("-")[1])
            with ProcessPoolExecutor(n, mp_context=ctx, initializer=die_with_parent, initargs=(mark, "ok")) as ex:
                for f in [ex.submit(slow) for _ in range(n)]:
                    f.result()
        elif kind.startswith("pool-"):
            ctx = mp.get_context(kind.split("-")[1])
            with ctx.Pool(n, initializer=die_with_parent, initargs=(mark, "ok")) as pool:
                list(pool.imap(slow, range(n), chunksize=1))
        elif kind == "catalysis":  # run_pool (fork, always a pool)
            import faenet.data.catalysis as m
            m._run_and_cache = slow
            m.gas_references = m.emt_lattice_constant = lambda *a: None  # seconds of EMT, not under test
            m.generate_catalysis(tmp, n_systems={"train": n}, metals=["Cu"], facets=["111"], adsorbates=["H"],
                                 alloys=[], ood_alloys=[], ood_adsorbates=[], workers=n, progress=False,
                                 summary_path=None)
        elif kind == "molecules":  # run_pool (spawn, always a pool)
            import faenet.data.molecules as m
            m._run_task = slow
            m._versions = lambda: {}
            m.label_molecules([{"kind": "stub", "i": i} for i in range(n)], workers=n, cache_dir=Path(tmp),
                              progress=False)
        elif kind.startswith("procs-"):  # faenet.procs.run_pool, the pool every stage uses
            from faenet.procs import run_pool
            list(run_pool(slow, range(n), n, initializer=mark, initargs=("ok",), start_method=kind.split("-")[1]))
        elif kind == "runs":  # run_pool (spawn), pipeline.runs.run_all; its workers import torch (threads=1)
            import pipeline.runs as m
            m._fit_job = slow
            m.run_all([SimpleNamespace(spec=StubSpec()) for _ in range(n)], workers=n, threads=n)
        elif kind == "symmetry":  # run_pool (spawn, completion order), pipeline.symmetry_jobs.run_jobs
            import pipeline.symmetry_jobs as m
            m.run_job = slow
            m.expected_cost = lambda job, jobs: 0.0
            params = SimpleNamespace(active=SimpleNamespace(symmetry=SimpleNamespace(workers=n)))
            jobs = [SimpleNamespace(cell="c", seed=i) for i in range(n)]
            list(m.run_jobs(jobs, params, None, False))
        elif kind == "expressivity":  # run_pool (fork), faenet.expressivity_runs.run_experiments
            import faenet.expressivity_runs as m
            m._job = slow
            m._cost = lambda exp: 0.0
            m._warm_caches = lambda cfg: None
            m.run_experiments(SimpleNamespace(workers=n), [SimpleNamespace(name=f"e{i}") for i in range(n)],
                              progress=False)
        else:
            raise SystemExit(f"unknown kind {kind!r}")


    if __name__ == "__main__":
        main(sys.argv[1], sys.argv[2])
''')


def _state(pid: int) -> str | None:
    """The /proc state letter of ``pid`` (R, S, Z, ...), None when it no longer exists."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rpartition(")")[2].split()[0]


def _alive(pid: int) -> bool:
    return _state(pid) not in (None, "Z", "X")  # an exited worker waiting for init to reap it is dead


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


KINDS = ["executor-spawn", "executor-fork", "pool-spawn", "pool-fork", "pool-forkserver", "executor-fork-fallback",
         "procs-spawn", "procs-fork", "catalysis", "molecules", "runs", "symmetry", "expressivity"]


@pytest.mark.parametrize("kind", KINDS)
def test_workers_die_with_their_killed_parent(kind, tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(script), kind, str(tmp_path / "work")], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    workers: list[int] = []
    lines: list[str] = []
    procs: set[int] = set()
    out: queue.Queue[str | None] = queue.Queue()

    def read() -> None:  # a thread, so that a parent whose workers never start fails the test instead of hanging it
        assert proc.stdout is not None
        for line in proc.stdout:
            out.put(line)
        out.put(None)

    threading.Thread(target=read, daemon=True).start()
    try:
        deadline = time.perf_counter() + START_TIMEOUT
        while len(workers) < N_WORKERS and (line := out.get(timeout=max(0.1, deadline - time.perf_counter()))):
            lines.append(line)
            if line.startswith("WORKER "):
                pid, init = line.split()[1:3]
                workers.append(int(pid))
                if kind.startswith(("executor", "pool", "procs")):
                    assert init == "init=ok", f"the wrapped initializer did not run in worker {pid}"
        assert len(workers) == N_WORKERS, f"parent ({kind}) exited before its workers ran:\n{''.join(lines)}"
        procs = _descendants(proc.pid)
        assert set(workers) <= procs
        t0 = time.perf_counter()
        proc.send_signal(signal.SIGKILL)
        proc.wait()  # reap the parent; its orphans go to init
        while (left := [p for p in procs if _alive(p)]) and time.perf_counter() - t0 < GRACE_SECONDS:
            time.sleep(0.02)
        elapsed = time.perf_counter() - t0
        print(f"{kind}: {len(procs)} processes ({len(workers)} workers) gone {elapsed:.3f} s after SIGKILL")
        assert not left, (f"{kind}: processes {left} (workers {workers}) still alive {GRACE_SECONDS} s after "
                          f"their parent was SIGKILLed")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in procs | set(workers):  # never leave a failing case's orphans behind
            if _alive(p):
                os.kill(p, signal.SIGKILL)
