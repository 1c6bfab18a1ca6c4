"""Running one benchmark stage as a subprocess with its output in a log file (used by the
benchmarks that run whole `turnrl` commands, or TRL, stage by stage)."""

from __future__ import annotations

import subprocess
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
