"""Benchmark: how long `zsc --help` and a command-line error take, against the eager start-up that imported torch.

    python bench/cli_startup.py              # 7 rounds of each, in fresh interpreters, interleaved
    python bench/cli_startup.py --rounds 15

The CLI imports torch only in the commands that compute with it (the codec, the profiles and the runtime import it
lazily), so `--help` and a bad argument answer before torch would have loaded. The reference is the same CLI with
``import torch`` first, which is what every command paid before. Each round runs every case once in a fresh
``python -c`` (interleaved, so load on a shared machine hits all of them alike); the ratios of medians are printed,
and each case's modules are checked for torch.

The second table times the other end of a command: the interpreter's teardown once a command has loaded what the
in-process classification service loads (torch, MLflow, the servicer) and built a model, with and without the
``gc.freeze()`` the console script calls before exiting (the teardown's full collection walks every object).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

# Each case: (name, code run by a fresh interpreter). They exit through the CLI's own argparse, like a user's shell.
PRELUDE = "import sys\nfrom zsc.cli.main import main\n"
RUN = (
    "sys.argv = ['zsc', *{argv!r}]\n"
    "try:\n    main()\nexcept SystemExit:\n    pass\n"
    "print('torch' in sys.modules, file=sys.stderr)\n"
)
CASES = {
    "lazy --help": PRELUDE + RUN.format(argv=["--help"]),
    "lazy zeroshot --help": PRELUDE + RUN.format(argv=["zeroshot", "--help"]),
    "lazy argument error": PRELUDE + RUN.format(argv=["zeroshot", "--method", "nope", "--data", "x"]),
    "eager --help (import torch first)": "import torch  # noqa\n" + PRELUDE + RUN.format(argv=["--help"]),
}
# A heavy command's heap (the modules and a tiny model of an in-process classification service), then exit. The
# child prints when its work is over, so the teardown is the time from that line to the process's end.
HEAVY = (
    "import mlflow.tracking, zsc_classification.servicer\n"
    "from zsc.models.clip import create_clip\n"
    "model = create_clip('tiny:zsc-tiny-clip')\n"
)
EXIT = "import sys, time\nprint(time.time(), file=sys.stderr, flush=True)\n"
TEARDOWN = {
    "teardown, default": HEAVY + EXIT,
    "teardown, gc.freeze() at exit": HEAVY + "import gc\ngc.freeze()\n" + EXIT,
}


def run_once(code: str) -> tuple[float, bool]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    if last not in ("True", "False"):
        raise SystemExit(f"case failed: {proc.stderr[-500:]}")
    return seconds, last == "True"


def teardown_once(code: str) -> float:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    end = time.time()
    try:
        return end - float(proc.stderr.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise SystemExit(f"case failed: {proc.stderr[-500:]}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in CASES}
    torch_loaded: dict[str, bool] = {}
    run_once(CASES["lazy --help"])  # warm the file cache (bytecode, shared libraries) before timing anything
    run_once(CASES["eager --help (import torch first)"])
    for _ in range(args.rounds):
        for name, code in CASES.items():
            seconds, loaded = run_once(code)
            times[name].append(seconds)
            torch_loaded[name] = loaded
    reference = statistics.median(times["eager --help (import torch first)"])
    print(f"{'case':<36} {'median s':>9} {'min s':>7} {'/ eager':>8}  torch imported")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<36} {median:9.3f} {min(values):7.3f} {median / reference:8.3f}  {torch_loaded[name]}")
    print(f"\nlazy --help / eager --help: {statistics.median(times['lazy --help']) / reference:.3f}\n")
    teardown: dict[str, list[float]] = {name: [] for name in TEARDOWN}
    for _ in range(args.rounds):
        for name, code in TEARDOWN.items():
            teardown[name].append(teardown_once(code))
    base = statistics.median(teardown["teardown, default"])
    print(f"{'case':<36} {'median s':>9} {'min s':>7} {'/ default':>10}")
    for name, values in teardown.items():
        median = statistics.median(values)
        print(f"{name:<36} {median:9.3f} {min(values):7.3f} {median / base:10.3f}")


if __name__ == "__main__":
    main()
