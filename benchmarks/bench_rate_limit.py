"""Every figure of the job store's design, side by side in one run: thousands of accounts, a
backlog beside a trickle, a strict provider window on 3 and 6 nodes, stock Celery's baselines.

    python -m benchmarks.bench_rate_limit [--json] [--quick] [--only SECTION ...]
                                                [--keep-logs] [--redis-hz N] [section options]

Sections, in this order, each on fresh worker nodes and a flushed private Redis (the simulator in
its own process; nothing touches the Redis on 6379):

scale     1 node -c 4, 3,000 jobs, no effective limit: jobs/s, worker CPU, Redis commands and
          bytes per job, idle cost, at 5, 1,000 and 5,000 configured accounts, beside stock
          Celery's bare task; `chat-archiver status` at each count       (bench_scale.py)
backlog   20,000 jobs on one account at 10/s, a trickle on four others, -c 4 and -c 16, beside
          the same without a backlog                                     (bench_backlog.py)
fairness  3 nodes x -c 2, a 3,000-job backlog, batches of 5 on an idle account
window    a cold burst and steady load under a strict sliding one-second window, 3 and 6
          nodes, beside stock Celery's rate_limit                          (bench_window.py)
enqueue   enqueue_many against a .delay() loop                           (bench_enqueue.py)

Each script runs its own sections alone, with the same options. Speeds are ratios to baselines
measured in the same run (the machine is shared: each section says how much CPU other processes
took meanwhile). Targets are printed PASS/MISS beside each figure; nothing is asserted.
How long it takes: benchmarks/README.md.
"""

from __future__ import annotations

from benchmarks import (
    bench_backlog,
    bench_enqueue,
    bench_scale,
    bench_window,
    harness,
)

MODULES = [bench_scale, bench_backlog, bench_window, bench_enqueue]

if __name__ == "__main__":
    harness.main(__doc__.splitlines()[0], MODULES, __doc__)
