"""``make fuzz``: run every fuzz target for a set time and report inputs tried and failures.

    python -m fuzz.run [--seconds 30] [--engine atheris|hypothesis] [target ...]

``atheris`` (the default when it is installed) runs each target in its own process under
libFuzzer with torchcaffe's code instrumented for coverage; a native crash, a hang (over
``--timeout`` seconds in one C call) or running out of memory stops that process and libFuzzer
saves the input in ``regressions/<target>/``. Python-level failures (an exception other than a
CaffeError, or an input over the per-input deadline) are saved there too, one input per distinct
failure, and fuzzing goes on. ``hypothesis`` runs the property-based strategies for the same
time. Exit status 1 when any target failed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

RESULT_TAG = "FUZZ-RESULT "


def _quiet() -> None:
    """The readers' warnings (bytes replaced, fields ignored) are expected here, by the thousand."""
    import logging
    import warnings
    logging.getLogger("torchcaffe").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")


def main(argv=None) -> int:
    _quiet()
    parser = argparse.ArgumentParser(prog="python -m fuzz.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help="targets to run (default: all)")
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("FUZZ_SECONDS", "30")))
    parser.add_argument("--engine", choices=["atheris", "hypothesis"], default=None)
    parser.add_argument("--timeout", type=int, default=20, help="libFuzzer's hang limit per input (s)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _atheris_child(args.child, args.seconds, args.timeout)
    from fuzz.targets import TARGETS
    targets = args.targets or list(TARGETS)
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s) {unknown}; targets: {sorted(TARGETS)}")
    engine = args.engine or ("atheris" if _has_atheris() else "hypothesis")
    print(f"fuzzing {len(targets)} target(s) with {engine}, {args.seconds:g} s each")
    results = [(_run_atheris if engine == "atheris" else _run_hypothesis)(t, args.seconds, args.timeout)
               for t in targets]
    print(f"\n{'target':<16} {'inputs':>9} {'loaded':>8} {'refused':>8} {'failures':>9}  saved")
    for r in results:
        print(f"{r['target']:<16} {r['inputs']:>9} {r['ok']:>8} {r['refused']:>8} {r['failures']:>9}  "
              f"{', '.join(r['saved']) or '-'}")
    return 1 if any(r["failures"] for r in results) else 0


def _has_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


# -- atheris: one process per target ---------------------------------------------------------------

def _run_atheris(target: str, seconds: float, timeout: int) -> dict:
    print(f"\n== {target} (atheris) ==", flush=True)
    command = [sys.executable, "-m", "fuzz.run", "--child", target, "--seconds", str(seconds),
               "--timeout", str(timeout)]
    process = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             errors="replace", timeout=seconds + timeout + 300)
    result = None
    for line in process.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            result = json.loads(line[len(RESULT_TAG):])
        elif "ERROR: libFuzzer" in line or "==ERROR" in line or line.startswith(("FAILURE", "artifact_prefix")) \
                or "Test unit written" in line or line.startswith("#") and "DONE" in line:
            print("   ", line)
    if result is None:  # the process died: a native crash, a hang or out of memory
        print(process.stdout[-3000:])
        result = {"target": target, "inputs": 0, "ok": 0, "refused": 0, "failures": 1,
                  "saved": [f"(process ended with status {process.returncode}; see libFuzzer's artifact)"]}
    print(f"   {result['inputs']} inputs, {result['failures']} failure(s)", flush=True)
    return result


def _atheris_child(target: str, seconds: float, timeout: int) -> int:
    import atheris
    import numpy  # noqa: F401 - heavy dependencies load uninstrumented
    import torch  # noqa: F401
    import h5py  # noqa: F401
    import cv2  # noqa: F401
    with atheris.instrument_imports(include=["torchcaffe", "fuzz"]):
        import torchcaffe  # noqa: F401
        from fuzz import targets as targets_module
    from fuzz.targets import REGRESSIONS, run_one, save_regression, failure_signature
    counts = {"target": target, "inputs": 0, "ok": 0, "refused": 0, "failures": 0, "saved": []}
    seen: set[str] = set()
    stop_at = time.monotonic() + seconds

    def report_and_exit() -> None:
        print(RESULT_TAG + json.dumps(counts), flush=True)
        os._exit(0)

    def one_input(data: bytes) -> None:
        if time.monotonic() >= stop_at:
            report_and_exit()
        outcome = run_one(target, data, use_alarm=False)
        counts["inputs"] += 1
        if outcome.failed:
            counts["failures"] += 1
            signature = failure_signature(outcome.detail)
            if signature not in seen:
                seen.add(signature)
                path = save_regression(target, data)
                counts["saved"].append(os.path.relpath(path))
                print(f"FAILURE {signature}\n{outcome.detail}", flush=True)
        else:
            counts[outcome.kind] += 1

    (REGRESSIONS / target).mkdir(parents=True, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f"fuzz-{target}-")
    corpus = targets_module.CORPUS / target
    argv = [sys.argv[0], f"-max_total_time={int(seconds) + 60}", f"-timeout={timeout}", "-rss_limit_mb=6144",
            f"-artifact_prefix={REGRESSIONS / target}/", "-print_final_stats=0", work]
    if corpus.is_dir():
        argv.append(str(corpus))
    atheris.Setup(argv, one_input)
    atheris.Fuzz()
    report_and_exit()
    return 0


# -- hypothesis: the property-based strategies for a set time ----------------------------------------

def _run_hypothesis(target: str, seconds: float, timeout: int) -> dict:
    from hypothesis import HealthCheck, given, settings
    from fuzz.properties import inputs
    from fuzz.targets import run_one, save_regression, failure_signature
    print(f"\n== {target} (hypothesis) ==", flush=True)
    counts = {"target": target, "inputs": 0, "ok": 0, "refused": 0, "failures": 0, "saved": []}
    seen: set[str] = set()
    stop_at = time.monotonic() + seconds

    @settings(max_examples=10**9, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(inputs(target))
    def property_(data: bytes) -> None:
        if time.monotonic() >= stop_at:
            raise _TimeUp
        outcome = run_one(target, data)
        counts["inputs"] += 1
        if outcome.failed:
            counts["failures"] += 1
            signature = failure_signature(outcome.detail)
            if signature not in seen:
                seen.add(signature)
                counts["saved"].append(os.path.relpath(save_regression(target, data)))
                print(f"FAILURE {signature}\n{outcome.detail}", flush=True)
        else:
            counts[outcome.kind] += 1

    try:
        property_()
    except _TimeUp:
        pass
    print(f"   {counts['inputs']} inputs, {counts['failures']} failure(s)", flush=True)
    return counts


class _TimeUp(BaseException):
    """Ends a hypothesis run when its time is up (not an Exception: hypothesis does not shrink it)."""


if __name__ == "__main__":
    sys.exit(main())
