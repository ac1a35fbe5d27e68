"""How long examples/quickstart.sh takes, step by step; prints JSON.

    python benchmarks/quickstart_time.py            # the flow (--no-install), with this headstart
    python benchmarks/quickstart_time.py --install  # also a fresh venv + `pip install -e .` (downloads)

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


def time_install(folder: Path) -> dict:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(folder / "venv")], check=True)
    pip = [str(folder / "venv" / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run(pip + ["--upgrade", "pip"], check=True)
    subprocess.run(pip + ["-e", str(REPO)], check=True)
    return {"install_s": round(time.perf_counter() - started, 1)}


def time_flow(folder: Path) -> dict:
    env = dict(os.environ, QUICKSTART_DIR=str(folder / "work"), HEADSTART_HOME=str(folder / "home"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    steps: dict[str, float] = {}
    started = last = time.perf_counter()
    current = None
    proc = subprocess.Popen(["bash", str(REPO / "examples" / "quickstart.sh"), "--no-install"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
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
    return {"flow_s": round(end - started, 1), "steps_s": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--install", action="store_true", help="also time a fresh venv and pip install -e .")
    args = parser.parse_args()
    result = {"load_before": os.getloadavg()[0], "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        if args.install:
            result.update(time_install(Path(tmp)))
        result.update(time_flow(Path(tmp)))
    result["load_after"] = os.getloadavg()[0]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
