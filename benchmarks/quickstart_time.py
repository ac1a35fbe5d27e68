"""How long examples/quickstart.sh takes, step by step; prints JSON.

    python benchmarks/quickstart_time.py            # the flow (--no-install), with this headstart
    python benchmarks/quickstart_time.py --install  # the whole script: fresh venv, cold pip cache, downloads

The flow runs in a temporary folder with a temporary $HEADSTART_HOME, so nothing is reused from
an earlier run. Each step's seconds are measured here, from when the script announces it
("== ...") to when it announces the next one. The load average before and after is in the
output: figures taken above ~1.5 on a 2-core machine are not results.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def time_quickstart(folder: Path, install: bool) -> dict:
    """Run examples/quickstart.sh as a user would; seconds per announced step ("== ...")."""
    env = dict(os.environ, QUICKSTART_DIR=str(folder / "work"), HEADSTART_HOME=str(folder / "home"))
    if install:
        # A fresh venv from a cold pip cache: what a new user's first run downloads and installs.
        env.update(QUICKSTART_VENV=str(folder / "venv"), PIP_NO_CACHE_DIR="1")
        # A user's shell does not set it (some sandboxes do); with it, Python keeps no bytecode
        # and every command compiles TensorFlow again.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        command = ["bash", str(REPO / "examples" / "quickstart.sh")]
    else:
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        command = ["bash", str(REPO / "examples" / "quickstart.sh"), "--no-install"]
    steps: dict[str, float] = {}
    started = last = time.perf_counter()
    current = None
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if line.startswith("== "):
            now = time.perf_counter()
            if current:
                steps[current] = round(now - last, 1)
            current, last = line[3:].split(":")[0].split(" (")[0].strip(), now
    proc.wait()
    end = time.perf_counter()
    if current:
        steps[current] = round(end - last, 1)
    if proc.returncode:
        raise SystemExit(f"quickstart.sh exited {proc.returncode}")
    total = round(end - started, 1)
    return {"total_s": total, "flow_s": round(total - steps.get("set-up", 0.0), 1), "steps_s": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--install", action="store_true", help="run the whole script: a fresh venv and its install, from a cold pip cache")
    args = parser.parse_args()
    result = {"load_before": os.getloadavg()[0], "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        result.update(time_quickstart(Path(tmp), args.install))
    result["load_after"] = os.getloadavg()[0]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
