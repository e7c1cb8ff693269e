"""Peak memory of `glmtune prepare` by data size: `python tools/prepare_memory.py 100000 1000000`.

For each size, writes that many short alpaca records to a temporary .jsonl file, runs `glmtune prepare` on the
builtin tiny GLM-4 in a fresh subprocess and reports its peak RSS (the child's ru_maxrss) and wall time. A flat
peak from 100k to 1M samples is what streaming prepare promises; the figures go in docs/robustness.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_data(path: Path, count: int) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for index in range(count):
            record = {"instruction": f"Question {index}: what is {index} plus {index % 97}?",
                      "output": f"It is {index + index % 97}."}  # fmt: skip
            handle.write(json.dumps(record) + "\n")


def measure(count: int, folder: Path) -> dict[str, float]:
    data = folder / f"d{count}.jsonl"
    write_data(data, count)
    recipe = folder / f"r{count}.toml"
    recipe.write_text(
        f'[run]\nname = "r{count}"\noutput_dir = "{folder / "runs"}"\n[model]\npath = "builtin:tiny-glm4"\n'
        f'[data]\ntrain = ["{data}"]\nmax_length = 64\n',
        encoding="utf-8",
    )
    started = time.perf_counter()
    with open(folder / "stderr.txt", "w") as errors:
        child = subprocess.Popen([sys.executable, "-m", "glmtune.cli", "prepare", str(recipe)], stderr=errors,
                                 stdout=subprocess.DEVNULL)  # fmt: skip
        status, usage = _wait(child.pid, count)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit((folder / "stderr.txt").read_text()[-2000:])
    return {"samples": count, "peak_rss_mb": usage.ru_maxrss / 1024, "seconds": seconds}


def _wait(pid: int, count: int):
    """Wait for the child, printing its high-water mark every 30 s (a long run killed early still tells)."""
    last = time.perf_counter()
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)  # this child's own rusage, not the max over children
        if done:
            return status, usage
        if time.perf_counter() - last > 30:
            last = time.perf_counter()
            print(f"  {count:,}: high-water RSS so far {_high_water_mb(pid):.1f} MB", flush=True)
        time.sleep(0.5)


def _high_water_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def main() -> None:
    sizes = sorted(int(arg) for arg in sys.argv[1:]) or [100_000, 1_000_000]
    with tempfile.TemporaryDirectory() as scratch:
        for count in sizes:
            row = measure(count, Path(scratch))
            print(
                f"{row['samples']:>9,} samples: peak RSS {row['peak_rss_mb']:7.1f} MB, {row['seconds']:6.1f} s"
            )


if __name__ == "__main__":
    main()
