"""Keep one process running: restart it when it dies, stop when told to.

    python -m nnpipe.deploy.supervise -- prefect worker start --pool nnpipe-production --type process

The stack runs its Prefect worker under this supervisor. A worker killed
outright (SIGKILL, the OOM killer) is started again after a short back-off,
so scheduled runs keep firing; the flow run it was running is found dead and
ended (MLflow run FAILED, flow run Crashed) by the next flow that starts
(:mod:`nnpipe.tracking.orphans`).

``stack down`` signals the supervisor's whole process group, so the worker
gets the signal once, from the kernel, and the supervisor only has to stop
restarting it. Forwarding it as well would give the worker a second SIGTERM,
which Prefect's worker answers with SIGKILL before its flow runs end.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)  # after the first death, then further deaths in quick succession
HEALTHY_S = 60.0  # a child that ran this long is healthy again: the back-off starts over


def supervise(args: list[str]) -> int:
    """Run ``args`` until SIGTERM or SIGINT reaches this process; restart it whenever it exits before that.

    Returns the child's last exit code once stopped.
    """
    stopping = False

    def on_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True  # the child got the same signal through the process group

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    deaths = 0
    while True:
        started = time.monotonic()
        child = subprocess.Popen(args)
        code = child.wait()
        if stopping:
            return code
        deaths = 0 if time.monotonic() - started > HEALTHY_S else deaths + 1
        pause = BACKOFF_S[min(deaths, len(BACKOFF_S)) - 1] if deaths else BACKOFF_S[0]
        print(f"supervise: {args[0]} (pid {child.pid}) exited with code {code}; starting it again in {pause:g} s",
              file=sys.stderr, flush=True)
        deadline = time.monotonic() + pause
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.2)
        if stopping:
            return code


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        print("usage: python -m nnpipe.deploy.supervise -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    return supervise(args)


if __name__ == "__main__":
    sys.exit(main())
