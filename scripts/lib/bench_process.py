"""Times a whole process by wall clock, for the scripts/bench-*.sh scripts.

Usage: python3 bench_process.py NAME N_EVENTS RUNS -- COMMAND [ARG...]

Runs COMMAND RUNS times, one after another, and prints on stdout
`BENCH <NAME> <N_EVENTS / best seconds> events/s` (or the unit in BENCH_PROCESS_UNIT) and `BENCH <NAME>_rss <MiB> MiB`, the
largest peak resident set size of any run (each run's own, from wait4's rusage). The time
of a run is from just before the process starts to just after it is reaped: start-up,
reading, computing and writing are all in it.
COMMAND's stdout and stderr go to stderr. If a run fails, both lines say
`unavailable (<the last line COMMAND wrote on stderr>)` and no further run starts.
Standard library only: it runs under the system python3.
"""

import os
import subprocess
import sys
import tempfile
import time


def last_line(path):
    with open(path, encoding="utf-8", errors="replace") as file:
        lines = [line.strip() for line in file if line.strip()]
    return lines[-1][:160] if lines else ""


def main():
    if len(sys.argv) < 6 or sys.argv[4] != "--":
        sys.exit("usage: bench_process.py NAME N_EVENTS RUNS -- COMMAND [ARG...]")
    name, n_events, runs = sys.argv[1], int(sys.argv[2]), max(1, int(sys.argv[3]))
    command = sys.argv[5:]
    best = None
    peak_kib = 0
    with tempfile.NamedTemporaryFile(prefix="bench-process-", suffix=".err") as err_file:
        for run_idx in range(runs):
            err_file.seek(0)
            err_file.truncate()
            started = time.perf_counter()
            child = subprocess.Popen(command, stdout=sys.stderr, stderr=err_file)
            # wait4, not child.wait(): it gives this child's own rusage.
            _, status, usage = os.wait4(child.pid, 0)
            elapsed = time.perf_counter() - started
            child.returncode = os.waitstatus_to_exitcode(status)
            with open(err_file.name, encoding="utf-8", errors="replace") as err_text:
                sys.stderr.write(err_text.read())
            if child.returncode != 0:
                reason = last_line(err_file.name) or f"exited with status {child.returncode}"
                print(f"    {name} run {run_idx + 1}/{runs} failed: {reason}", file=sys.stderr)
                print(f"BENCH {name} unavailable ({reason})", flush=True)
                print(f"BENCH {name}_rss unavailable ({reason})", flush=True)
                return
            # Linux reports ru_maxrss in KiB.
            print(
                f"    {name} run {run_idx + 1}/{runs}: {elapsed:.3f}s, "
                f"peak RSS {usage.ru_maxrss / 1024:.0f} MiB",
                file=sys.stderr,
            )
            best = elapsed if best is None else min(best, elapsed)
            peak_kib = max(peak_kib, usage.ru_maxrss)
    unit = os.environ.get("BENCH_PROCESS_UNIT", "events/s")
    print(f"BENCH {name} {n_events / best:.0f} {unit}", flush=True)
    print(f"BENCH {name}_rss {peak_kib / 1024:.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
