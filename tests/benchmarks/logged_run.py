"""Running benchmark stages as subprocesses: `run_logged` keeps a stage's output in a log file
(the benchmarks that run whole `turnrl` commands, or TRL, stage by stage); `turnrl_recorded`
records a `turnrl` command's arguments, output and time beside its results, so `--reuse` can add
seeds to a benchmark without running the finished ones again."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_logged(cmd: list[str], log: Path) -> float:
    """Run `cmd` in the repository root with its output in `log`; the seconds it took. A failure
    stops the benchmark with the log's tail."""
    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed; see {log}:\n{log.read_text()[-3000:]}")
    return time.perf_counter() - t0


def turnrl_recorded(args: list[str], record: Path, reuse: bool = False) -> tuple[str, float]:
    """`turnrl ARGS` as a subprocess: (its stdout, the seconds it took), both written to `record`
    with the arguments once it succeeds. With `reuse`, an existing record is read instead of running
    again; one made with other arguments stops the benchmark (its results would not be comparable)."""
    if reuse and record.exists():
        saved = json.loads(record.read_text())
        if saved["args"] != args:
            raise SystemExit(f"--reuse: {record} was made with other arguments:\n{saved['args']}\nnot\n{args}")
        print(f"turnrl {' '.join(args[:2])}: reused {record}", flush=True)
        return saved["stdout"], saved["wall_s"]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rl.cli", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"turnrl {' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    wall_s = time.perf_counter() - t0
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"args": args, "wall_s": wall_s, "stdout": proc.stdout}) + "\n")
    print(f"turnrl {' '.join(args[:2])}: {wall_s:.0f} s", flush=True)
    return proc.stdout, wall_s
