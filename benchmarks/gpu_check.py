"""One GPU check: build, op tests on CUDA, PUT Table 4, op benchmarks, sampler tokens/s.

    python benchmarks/gpu_check.py OUT_DIR [--budget 480]

Run from the repository root on a CUDA machine. Each step runs in its own process under its own
time limit (a hang costs that step, not the rest), and whatever fails is reported while the
script goes on. OUT_DIR receives `gpu_report.md` and `gpu_report.json` (plus the raw
pytest-benchmark JSON of each benchmark step). Without CUDA (or with --dry-run) every step is
still reached and the ones that need CUDA report "skipped: no CUDA", which checks the plumbing.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _steps(out: Path) -> list[dict]:
    """name, command, time limit (s), whether it needs CUDA, the benchmark JSON it writes."""
    py = sys.executable
    bench = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--benchmark-only"]

    def bench_step(name, files, limit, *extra):
        path = out / f"{name}.json"
        return dict(name=name, cmd=bench + list(files) + [f"--benchmark-json={path}", *extra], limit=limit,
                    cuda=True, json=path)

    return [
        dict(name="build", cmd=[py, "-m", "pip", "install", "-q", "-e", ".", "--no-build-isolation", "--no-deps"],
             limit=240, cuda=True, env={"MAX_JOBS": str(os.cpu_count() or 8)}),
        dict(name="info", cmd=[py, "-m", "vqfast", "info"], limit=60, cuda=False),
        dict(name="op_tests", cmd=[py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/gpu", "-x",
                                   f"--junitxml={out / 'op_tests.xml'}"], limit=150, cuda=True),
        bench_step("put_table4", ["benchmarks/test_bench_put.py"], 150),
        bench_step("op_benchmarks", ["benchmarks/test_bench_gpu_search.py", "benchmarks/test_bench_gpu_ops.py"], 120),
        bench_step("samplers", ["benchmarks/test_bench_gpu_samplers.py"], 90),
    ]


def _run(step: dict, limit: float) -> dict:
    start = time.perf_counter()
    env = {**os.environ, **step.get("env", {})}
    try:
        proc = subprocess.run(step["cmd"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        log = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        status = f"timed out after {limit:.0f} s"
        log = (err.stdout or b"").decode(errors="replace") + (err.stderr or b"").decode(errors="replace")
    return dict(status=status, seconds=round(time.perf_counter() - start, 1), log_tail=log[-4000:])


def _benchmark_rows(path: Path) -> list[dict]:
    """name, median ms and the ratios each benchmark recorded in extra_info."""
    if not path.exists():
        return []
    rows = []
    for b in json.loads(path.read_text()).get("benchmarks", []):
        rows.append(dict(name=b["name"], median_ms=round(b["stats"]["median"] * 1e3, 4), **b.get("extra_info", {})))
    return rows


def _device() -> dict:
    import torch
    info = dict(python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda,
                cuda_available=torch.cuda.is_available())
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(name=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2 ** 30, 1),
                    sms=p.multi_processor_count)
    return info


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def _markdown(report: dict) -> str:
    dev = report["device"]
    lines = [f"# vqfast GPU check, {report['date']}, commit {report['commit']}", "",
             f"Device: {dev.get('name', 'no CUDA device')} (capability {dev.get('capability', '-')}, "
             f"{dev.get('memory_gib', '-')} GiB) | torch {dev['torch']} | CUDA {dev['cuda']} | "
             f"Triton {dev['triton']} | Python {dev['python']}", "",
             "| step | status | seconds |", "| --- | --- | --- |"]
    lines += [f"| {s['name']} | {s['status']} | {s['seconds']} |" for s in report["steps"]]
    for s in report["steps"]:
        if s.get("rows"):
            keys = sorted({k for r in s["rows"] for k in r} - {"name", "median_ms"})
            lines += ["", f"## {s['name']}", "", "| row | median ms | " + " | ".join(keys) + " |",
                      "| --- | --- | " + " | ".join("---" for _ in keys) + " |"]
            lines += [f"| {r['name']} | {r['median_ms']} | " + " | ".join(str(r.get(k, "")) for k in keys) + " |"
                      for r in s["rows"]]
        if not s["status"].startswith(("ok", "skipped")):
            lines += ["", f"### {s['name']}: last output", "", "```", s["log_tail"][-2000:], "```"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for gpu_report.md / gpu_report.json")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for all steps together")
    parser.add_argument("--dry-run", action="store_true", help="skip every CUDA step (automatic without CUDA)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    import torch
    dry = args.dry_run or not torch.cuda.is_available()
    report = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  commit=_commit(), device=_device(), dry_run=dry, steps=[])
    print(f"device: {report['device']}", flush=True)
    deadline = time.perf_counter() + args.budget
    for step in _steps(args.out):
        left = deadline - time.perf_counter()
        if dry and step["cuda"]:
            result = dict(status="skipped: no CUDA", seconds=0.0, log_tail="")
        elif left < 10:
            result = dict(status="skipped: out of time", seconds=0.0, log_tail="")
        else:
            result = _run(step, min(step["limit"], left))
        result["name"] = step["name"]
        if "json" in step:
            result["rows"] = _benchmark_rows(step["json"])
        report["steps"].append(result)
        print(f"[{step['name']}] {result['status']} in {result['seconds']} s", flush=True)
    (args.out / "gpu_report.json").write_text(json.dumps(report, indent=2))
    (args.out / "gpu_report.md").write_text(_markdown(report))
    print(f"wrote {args.out / 'gpu_report.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
