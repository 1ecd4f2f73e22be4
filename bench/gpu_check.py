"""GPU check: the GAN's forecasts, speed and memory on a CUDA device, in one bounded run.

What ``scripts/gpu-check.sh`` runs after setting up the environment (see docs/gpu-check.md).
It also runs on a machine without a GPU (``--device cpu``, or ``auto`` where no CUDA device
is found), so that every measurement is exercised before a GPU is lent; ``--quick`` takes
small grids and short runs.

    python bench/gpu_check.py --quick --device cpu --out /tmp/gpucheck
    python bench/gpu_check.py --device cuda --out "$OUT"        # the full check, about 5 minutes

Phases, each in its own process with its own time limit (a phase that fails, crashes or
runs out of time is recorded as such, with what it measured so far, and the others still run):

env          the machine: ``nvidia-smi -L``, torch/CUDA/cuDNN versions, TF32 flags
pytest_cuda  ``pytest tests/test_cuda.py`` (the tests marked ``cuda``), outcome per test
parity       one forecast per shipped model on the device against the CPU's, in fp32 and
             half precision (the forecaster's own fp16, and autocast fp16/bf16 around its generator)
latency      p50/p99 of one deterministic forecast (4 frames in, 12 out) per grid, after a warm-up
memory       peak device memory of one forecast per grid (``torch.cuda.max_memory_allocated``)
ensemble     ``members=20`` of the ensemble model: time and peak memory
breakdown    where a batched request's time goes: motion (CPU), trajectories, advection,
             generator, the rest; plus the profiler's top operators
service      requests/s and p50/p99 at 1/8/32 clients, batching on and off (bench/load_service.py)

Writes ``gpu-check.json``, ``gpu-check.md`` and ``gpu-check.log`` to ``--out`` (default: $OUT,
else runs/gpu-check).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a checkout that is not pip-installed (the device's image python)
    sys.path.insert(0, str(REPO))

PHASES = ["env", "pytest_cuda", "parity", "latency", "memory", "ensemble", "breakdown", "service"]
#: seconds each phase may run (the whole run is also bounded by --budget-s)
PHASE_TIMEOUT_S = {"env": 60, "pytest_cuda": 180, "parity": 150, "latency": 150, "memory": 90,
                   "ensemble": 120, "breakdown": 90, "service": 240}
#: fp32 on the device against fp32 on the CPU (same weights, same input): mm/h + fraction of the CPU's rate
FP32_TOLERANCE = (0.05, 0.005)
#: half precision against fp32: the service's own bound (NOWCAST_HALF_TOLERANCE_MMH=0.1, plus 1% of the rate)
HALF_TOLERANCE = (0.1, 0.01)
#: models that draw noise draw it from a generator on their device, so CUDA and CPU members are
#: different draws: these are compared by where it rains, not pixel by pixel
NOISE_MIN_CSI_1MMH = 0.7
NOISE_MAX_MEAN_RATE_CHANGE = 0.10
CSI_THRESHOLDS_MMH = (1.0, 4.0, 8.0)


@dataclass
class Plan:
    """What one run measures: sizes, repeats and models; ``--quick`` picks the small one."""

    device: str = "auto"
    quick: bool = False
    frames: int = 4
    steps: int = 12
    models: list[str] = field(default_factory=list)  # empty: every model of the registry
    latency_model: str = "default-gan"
    sizes: list[int] = field(default_factory=lambda: [256, 512, 1024])
    latency_repeats: int = 30
    latency_cap_s: float = 15.0  # per grid and precision, warm-up excluded
    parity_grid: int = 256
    ensemble_model: str = "ensemble-gan"
    ensemble_members: int = 20
    ensemble_grids: list[int] = field(default_factory=lambda: [256, 512])
    ensemble_repeats: int = 3
    breakdown_grid: int = 256
    breakdown_batch: int = 8
    service_model: str = "default-gan"
    service_grid: int = 256
    service_concurrency: list[int] = field(default_factory=lambda: [1, 8, 32])
    service_duration_s: float = 6.0

    @classmethod
    def make(cls, device: str, quick: bool) -> Plan:
        if not quick:
            return cls(device=device)
        return cls(device=device, quick=True, sizes=[64, 128], latency_repeats=5, latency_cap_s=10.0,
                   parity_grid=64, ensemble_grids=[64], ensemble_repeats=1, breakdown_grid=64,
                   breakdown_batch=2, service_grid=64, service_duration_s=2.0)


# ---------------------------------------------------------------------------------------------
# helpers shared by the phases (torch and nowcast are imported inside, so the parent stays light)
# ---------------------------------------------------------------------------------------------


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {requested} asked but torch {torch.__version__} sees no CUDA device")
    return requested


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def synthetic_past(grid: int, frames: int, seed: int = 0):
    """(frames, grid, grid) synthetic rain in the sequence form (xarray)."""
    from nowcast.synthetic import SyntheticRain, synthetic_sequence

    return synthetic_sequence(SyntheticRain(ny=grid, nx=grid, frames=frames), seed=seed)


def csi(reference, other, threshold: float) -> float:
    """Critical success index of ``other`` against ``reference`` at ``threshold`` mm/h (1.0 where neither rains)."""
    import numpy as np

    ref, oth = np.nan_to_num(reference) >= threshold, np.nan_to_num(other) >= threshold
    hits, misses, false_alarms = int((ref & oth).sum()), int((ref & ~oth).sum()), int((~ref & oth).sum())
    total = hits + misses + false_alarms
    return 1.0 if total == 0 else hits / total


def compare(reference, other, tolerance: tuple[float, float]) -> dict[str, Any]:
    """How far ``other`` is from ``reference`` (mm/h arrays of one shape), and whether within ``tolerance``."""
    import numpy as np

    ref, oth = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    both = np.isfinite(ref) & np.isfinite(oth)
    nan_mismatch = int((np.isfinite(ref) != np.isfinite(oth)).sum())
    diff = np.abs(ref[both] - oth[both])
    abs_tol, rel_tol = tolerance
    excess = diff - (abs_tol + rel_tol * np.abs(ref[both]))
    beyond = int((excess > 0).sum())
    mean_ref, mean_oth = float(np.nanmean(ref)), float(np.nanmean(oth))
    return {
        "max_abs_mmh": float(diff.max()) if diff.size else 0.0,
        "mean_abs_mmh": float(diff.mean()) if diff.size else 0.0,
        "p99_9_abs_mmh": float(np.percentile(diff, 99.9)) if diff.size else 0.0,
        "nan_mismatch": nan_mismatch,
        "tolerance": f"{abs_tol:g} mm/h + {rel_tol * 100:g}% of the reference rate",
        "pixels_beyond_tolerance": beyond,
        "fraction_beyond_tolerance": beyond / max(diff.size, 1),
        "within_tolerance": beyond == 0 and nan_mismatch == 0,
        "csi": {f"{t:g}mmh": round(csi(ref, oth, t), 5) for t in CSI_THRESHOLDS_MMH},
        "mean_rate_mmh": [mean_ref, mean_oth],
        "mean_rate_change": (mean_oth - mean_ref) / mean_ref if mean_ref else 0.0,
    }


class AutocastGenerator:
    """The forecaster's generator called under ``torch.autocast(device, dtype)``.

    The forecaster's own half precision is fp16 on CUDA only; this measures bf16 (and fp16
    on the CPU) without changing the forecaster: it calls ``self.generator(...)``, and an
    autocast region entered inside its disabled one is on.
    """

    def __init__(self, generator: Any, device_type: str, dtype: Any) -> None:
        self.generator, self.device_type, self.dtype = generator, device_type, dtype

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import torch

        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.generator(*args, **kwargs)


@contextlib.contextmanager
def generator_autocast(forecaster: Any, dtype_name: str) -> Iterator[None]:
    import torch

    original = forecaster.generator
    forecaster.generator = AutocastGenerator(original, forecaster.device.type, getattr(torch, dtype_name))
    try:
        yield
    finally:
        forecaster.generator = original


@contextlib.contextmanager
def forecaster_half(forecaster: Any) -> Iterator[None]:
    """The forecaster's own fp16 switch (what the service sets), as ``choose_precision`` does it."""
    before = forecaster.half
    forecaster.half = True
    try:
        yield
    finally:
        forecaster.half = before


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    import torch

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def precision(forecaster: Any, variant: str) -> contextlib.AbstractContextManager[Any]:
    """The context a parity variant runs in: fp32, fp32_no_tf32, fp16_forecaster, fp16_autocast, bf16_autocast."""
    if variant == "fp32":
        return contextlib.nullcontext()
    if variant == "fp32_no_tf32":
        return no_tf32()
    if variant == "fp16_forecaster":
        return forecaster_half(forecaster)
    return generator_autocast(forecaster, {"fp16_autocast": "float16", "bf16_autocast": "bfloat16"}[variant])


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (with few samples p99 is the largest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100.0 * len(ordered)) - 1)]


def timing_summary(times_s: list[float]) -> dict[str, Any]:
    ms = [t * 1e3 for t in times_s]
    return {"n": len(ms), "p50_ms": round(percentile(ms, 50), 2), "p99_ms": round(percentile(ms, 99), 2),
            "mean_ms": round(statistics.fmean(ms), 2), "min_ms": round(min(ms), 2), "max_ms": round(max(ms), 2)}


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


def mib(n_bytes: float) -> float:
    return round(n_bytes / 2**20, 1)


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


class Recorder:
    """A phase's result, saved after every step so that a phase stopped at its limit keeps what it measured."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {}
        self.errors = 0

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(dump_json(self.data))
        tmp.replace(self.path)

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.save()

    @contextlib.contextmanager
    def step(self, key: str, into: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """A sub-measurement: its dict is stored under ``key``; an exception becomes its ``error``."""
        target = self.data if into is None else into
        entry: dict[str, Any] = {}
        target[key] = entry
        try:
            yield entry
        except Exception as exc:
            self.errors += 1
            entry["error"] = error_text(exc)
            entry["traceback"] = traceback.format_exc(limit=6)[-3000:]
            print(f"[{key}] {error_text(exc)}", file=sys.stderr, flush=True)
        self.save()


# ---------------------------------------------------------------------------------------------
# phases: each takes the plan and a Recorder, runs in its own process
# ---------------------------------------------------------------------------------------------


def phase_env(plan: Plan, rec: Recorder) -> None:
    import numpy as np
    import torch

    device = resolve_device(plan.device)
    info: dict[str, Any] = {
        "device_requested": plan.device, "device": device, "python": sys.version.split()[0],
        "platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "torch_cuda_build": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
        "numpy": np.__version__, "torch_threads": torch.get_num_threads(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }
    if torch.backends.cudnn.is_available():
        info["cudnn"] = torch.backends.cudnn.version()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": props.name, "total_memory_mib": mib(props.total_memory),
                       "multiprocessors": props.multi_processor_count, "capability": f"{props.major}.{props.minor}",
                       "count": torch.cuda.device_count()}
    for command in (["nvidia-smi", "-L"],
                    ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                     "--format=csv,noheader"]):
        key = "nvidia_smi_L" if command[1] == "-L" else "nvidia_smi_query"
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=20)
            info[key] = (done.stdout or done.stderr).strip()
        except (OSError, subprocess.TimeoutExpired) as exc:
            info[key] = f"unavailable: {error_text(exc)}"
    versions = {}
    for module in ("pysteps", "fastapi", "uvicorn", "pydantic", "scipy", "cv2", "xarray"):
        try:
            versions[module] = getattr(__import__(module), "__version__", "?")
        except Exception as exc:
            versions[module] = f"missing: {error_text(exc)}"
    info["packages"] = versions
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                            text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        info["git_commit"] = None
    from nowcast import artifacts

    info["models"] = {name: artifacts.list_versions(name) for name in artifacts.list_models()}
    rec.data.update(info)
    rec.save()


def phase_pytest_cuda(plan: Plan, rec: Recorder) -> None:
    import xml.etree.ElementTree as ET

    junit = rec.path.with_name("pytest-cuda.xml")
    command = [sys.executable, "-m", "pytest", "tests/test_cuda.py", "-q", "-rA", "-p", "no:cacheprovider",
               f"--junitxml={junit}"]
    started = time.perf_counter()
    rec.put("command", " ".join(command[1:]))
    # its output goes to this phase's log (gpu-check.log), also when the phase is stopped at its limit
    done = subprocess.run(command, cwd=REPO, timeout=PHASE_TIMEOUT_S["pytest_cuda"] - 10)
    rec.data.update({"returncode": done.returncode, "seconds": round(time.perf_counter() - started, 1)})
    if junit.is_file():
        tests = []
        for case in ET.parse(junit).getroot().iter("testcase"):
            outcome, message = "passed", ""
            for kind in ("failure", "error", "skipped"):
                node = case.find(kind)
                if node is not None:
                    outcome, message = kind, (node.get("message") or node.text or "")[:500]
                    break
            tests.append({"test": case.get("name"), "outcome": outcome, "seconds": float(case.get("time") or 0),
                          "message": message})
        rec.data["tests"] = tests
        rec.data["counts"] = {k: sum(t["outcome"] == k for t in tests)
                              for k in ("passed", "failure", "error", "skipped")}
    if done.returncode not in (0, 5):  # 5: nothing collected
        rec.errors += 1
    rec.save()


def phase_parity(plan: Plan, rec: Recorder) -> None:
    """One forecast per model on the device against the CPU, fp32 and half precision."""
    import torch

    from nowcast import artifacts
    from nowcast.forecasters import get_forecaster

    device = resolve_device(plan.device)
    cuda = device.startswith("cuda")
    past = synthetic_past(plan.parity_grid, plan.frames).values[None]
    models = plan.models or artifacts.list_models()
    rec.put("setup", {"device": device, "grid": plan.parity_grid, "steps": plan.steps, "seed": 0,
                      "fp32_tolerance": compare([0.0], [0.0], FP32_TOLERANCE)["tolerance"],
                      "half_tolerance": compare([0.0], [0.0], HALF_TOLERANCE)["tolerance"],
                      "tf32_cudnn": torch.backends.cudnn.allow_tf32,
                      "fp16_forecaster": "GANForecaster(half=True), what the service turns on: CUDA only "
                                         "(its autocast is CUDA's), so not run on a CPU",
                      "note": "noise models draw noise on their device: judged by CSI at 1 mm/h >= "
                              f"{NOISE_MIN_CSI_1MMH} and mean rate within {NOISE_MAX_MEAN_RATE_CHANGE:.0%}"})
    results: dict[str, Any] = {}
    rec.data["models"] = results

    def run(forecaster: Any) -> tuple[Any, float]:
        sync(device)
        t0 = time.perf_counter()
        out = forecaster.predict(past, plan.steps, seed=0)
        sync(device)
        return out, time.perf_counter() - t0

    for name in models:
        with rec.step(name, results) as entry:
            cpu = get_forecaster(name, device="cpu")
            noisy = bool(cpu.supports_members)
            entry["draws_noise"] = noisy
            reference, entry["cpu_seconds"] = run(cpu)
            del cpu
            target = get_forecaster(name, device=device)
            run(target)  # warm-up on the device
            variants = ["fp32", "fp32_no_tf32", "fp16_forecaster"] if cuda else ["fp32"]
            variants += ["fp16_autocast", "bf16_autocast"]
            fp32 = None
            for variant in variants:
                with rec.step(variant, entry) as out:
                    with precision(target, variant):
                        run(target)  # a precision's first call pays its own start-up
                        forecast, seconds = run(target)
                    out["seconds"] = seconds
                    fp32 = forecast if variant == "fp32" else fp32
                    half = variant not in ("fp32", "fp32_no_tf32")
                    out["vs_cpu_fp32"] = compare(reference, forecast, HALF_TOLERANCE if half else FP32_TOLERANCE)
                    if half and fp32 is not None:
                        out["vs_device_fp32"] = compare(fp32, forecast, HALF_TOLERANCE)
                    judged = out.get("vs_device_fp32", out["vs_cpu_fp32"])
                    if noisy and not half:
                        ok = (judged["csi"]["1mmh"] >= NOISE_MIN_CSI_1MMH
                              and abs(judged["mean_rate_change"]) <= NOISE_MAX_MEAN_RATE_CHANGE)
                    else:
                        ok = judged["within_tolerance"]
                    out["verdict"] = "pass" if ok else "beyond tolerance"
            if cuda:
                with rec.step("service_precision_auto", entry) as out:
                    from service.inference.models import choose_precision

                    out["chosen"] = choose_precision(target, "auto", HALF_TOLERANCE[0])
                    target.half = False
            del target
            if cuda:
                torch.cuda.empty_cache()


def phase_latency(plan: Plan, rec: Recorder) -> None:
    """p50/p99 of ``forecast()`` (4 frames in, 12 out) per grid, fp32 and (CUDA) the forecaster's fp16."""
    from nowcast.forecasters import get_forecaster

    device = resolve_device(plan.device)
    forecaster = get_forecaster(plan.latency_model, device=device)
    rec.put("setup", {"device": device, "model": plan.latency_model, "frames_in": plan.frames,
                      "steps_out": plan.steps, "warmup_calls": 2, "max_repeats": plan.latency_repeats,
                      "cap_s_per_grid": plan.latency_cap_s, "timed": "Forecaster.forecast, synchronised"})
    precisions = {"fp32": "fp32", "fp16": "fp16_forecaster"} if device.startswith("cuda") else {"fp32": "fp32"}
    grids: dict[str, Any] = {}
    rec.data["grids"] = grids
    for grid in plan.sizes:
        past = synthetic_past(grid, plan.frames)
        per_grid: dict[str, Any] = {}
        grids[str(grid)] = per_grid
        for label, variant in precisions.items():
            with rec.step(label, per_grid) as out, precision(forecaster, variant):
                for _ in range(2):
                    forecaster.forecast(past, plan.steps)
                times: list[float] = []
                began = time.perf_counter()
                while len(times) < plan.latency_repeats and time.perf_counter() - began < plan.latency_cap_s:
                    sync(device)
                    t0 = time.perf_counter()
                    forecaster.forecast(past, plan.steps)
                    sync(device)
                    times.append(time.perf_counter() - t0)
                out.update(timing_summary(times))


def phase_memory(plan: Plan, rec: Recorder) -> None:
    """Peak device memory of one forecast per grid (and of a batch of ``breakdown_batch``)."""
    import numpy as np
    import torch

    from nowcast.forecasters import get_forecaster

    device = resolve_device(plan.device)
    cuda = device.startswith("cuda")
    forecaster = get_forecaster(plan.latency_model, device=device)
    rec.put("setup", {"device": device, "model": plan.latency_model,
                      "measure": "torch.cuda.max_memory_allocated during one predict, minus what was allocated "
                                 "before (the weights)" if cuda else
                                 "no CUDA device: the process's peak RSS after each forecast (grows only)"})
    cases = [(grid, 1) for grid in plan.sizes] + [(plan.breakdown_grid, plan.breakdown_batch)]
    precisions = {"fp32": "fp32", "fp16": "fp16_forecaster"} if cuda else {"fp32": "fp32"}
    results: dict[str, Any] = {}
    rec.data["cases"] = results
    for grid, batch in cases:
        past = np.repeat(synthetic_past(grid, plan.frames).values[None], batch, axis=0)
        for label, variant in precisions.items():
            with rec.step(f"{grid}x{grid}_batch{batch}_{label}", results) as out, precision(forecaster, variant):
                forecaster.predict(past[:1], plan.steps)  # warm-up (allocator, cuDNN)
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                    before = torch.cuda.memory_allocated()
                    forecaster.predict(past, plan.steps)
                    torch.cuda.synchronize()
                    peak = torch.cuda.max_memory_allocated()
                    out.update({"allocated_before_mib": mib(before), "peak_mib": mib(peak),
                                "per_request_mib": mib(peak - before),
                                "reserved_mib": mib(torch.cuda.max_memory_reserved())})
                else:
                    forecaster.predict(past, plan.steps)
                    out["peak_rss_mib"] = peak_rss_mib()


def phase_ensemble(plan: Plan, rec: Recorder) -> None:
    """``members`` of the ensemble model per grid: seconds and peak device memory."""
    import torch

    from nowcast.forecasters import get_forecaster

    device = resolve_device(plan.device)
    cuda = device.startswith("cuda")
    forecaster = get_forecaster(plan.ensemble_model, device=device)
    rec.put("setup", {"device": device, "model": plan.ensemble_model, "members": plan.ensemble_members,
                      "steps": plan.steps, "max_call_pixels": getattr(forecaster, "max_call_pixels", None)})
    grids: dict[str, Any] = {}
    rec.data["grids"] = grids
    for grid in plan.ensemble_grids:
        past = synthetic_past(grid, plan.frames).values[None]
        with rec.step(str(grid), grids) as out:
            forecaster.predict(past, plan.steps, members=plan.ensemble_members, seed=1)  # warm-up
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
            times = []
            for repeat in range(plan.ensemble_repeats):
                sync(device)
                t0 = time.perf_counter()
                members = forecaster.predict(past, plan.steps, members=plan.ensemble_members, seed=2 + repeat)
                sync(device)
                times.append(time.perf_counter() - t0)
            out.update(timing_summary(times))
            out["shape"] = list(members.shape)
            out["member_spread_mmh"] = float(members[0].std(axis=0).mean())
            if cuda:
                out.update({"peak_mib": mib(torch.cuda.max_memory_allocated()),
                            "per_request_mib": mib(torch.cuda.max_memory_allocated() - before)})
            else:
                out["peak_rss_mib"] = peak_rss_mib()


#: the functions the forecaster calls by these names in nowcast.gan.forecaster, timed in place
BREAKDOWN_HOOKS = {
    "lucas_kanade_coarse": "motion (CPU, pysteps Lucas-Kanade, once per sequence)",
    "trajectories": "back-trajectories (device)",
    "along": "advection of the last frame (device)",
    "lagrangian_past": "past frames into the Lagrangian frame (device)",
}


def phase_breakdown(plan: Plan, rec: Recorder) -> None:
    """Where one batched request spends its time, by timers around the forecaster's phases, and the profiler."""
    import numpy as np

    import nowcast.gan.forecaster as gan_module
    from nowcast.forecasters import get_forecaster

    device = resolve_device(plan.device)
    forecaster = get_forecaster(plan.latency_model, device=device)
    rec.put("setup", {"device": device, "model": plan.latency_model, "grid": plan.breakdown_grid,
                      "steps": plan.steps, "method": "the module's functions wrapped by synchronised timers "
                      "(the syncs remove overlap, so the parts add up to a little more than an unhooked call)"})
    past_one = synthetic_past(plan.breakdown_grid, plan.frames).values[None]
    totals: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)

    def timed(label: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            sync(device)
            t0 = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                sync(device)
                totals[label] += time.perf_counter() - t0
                calls[label] += 1
        return wrapper

    originals = {name: getattr(gan_module, name) for name in BREAKDOWN_HOOKS if hasattr(gan_module, name)}
    rec.data["hooks_missing"] = sorted(set(BREAKDOWN_HOOKS) - set(originals))
    generator = forecaster.generator
    for batch in sorted({1, plan.breakdown_batch}):
        past = np.repeat(past_one, batch, axis=0)
        with rec.step(f"batch{batch}", rec.data) as out:
            forecaster.predict(past, plan.steps)  # warm-up, unhooked
            sync(device)
            t0 = time.perf_counter()
            forecaster.predict(past, plan.steps)
            sync(device)
            out["unhooked_s"] = round(time.perf_counter() - t0, 4)
            totals.clear()
            calls.clear()
            try:
                for name, function in originals.items():
                    setattr(gan_module, name, timed(BREAKDOWN_HOOKS[name], function))
                forecaster.generator = timed("generator (device)", generator)
                sync(device)
                t0 = time.perf_counter()
                forecaster.predict(past, plan.steps)
                sync(device)
                total = time.perf_counter() - t0
            finally:
                for name, function in originals.items():
                    setattr(gan_module, name, function)
                forecaster.generator = generator
            parts = {label: round(seconds, 4) for label, seconds in totals.items()}
            parts["other (copies, normalise, pad, decode)"] = round(total - sum(totals.values()), 4)
            out.update({"hooked_total_s": round(total, 4), "seconds": parts,
                        "share": {k: round(v / total, 3) for k, v in parts.items()}, "calls": dict(calls)})
    with rec.step("profiler_top_ops", rec.data) as out:
        from torch.profiler import ProfilerActivity, profile

        cuda = device.startswith("cuda")
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        past = np.repeat(past_one, plan.breakdown_batch, axis=0)
        with profile(activities=activities) as prof:
            forecaster.predict(past, plan.steps)
            sync(device)

        def device_us(event: Any) -> float:
            return float(getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0.0)))

        events = list(prof.key_averages())
        events.sort(key=(device_us if cuda else (lambda e: e.self_cpu_time_total)), reverse=True)
        out["sorted_by"] = "self device time" if cuda else "self CPU time"
        out["batch"] = plan.breakdown_batch
        out["ops"] = [{"op": e.key[:80], "calls": e.count, "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 2),
                       "self_device_ms": round(device_us(e) / 1e3, 2)} for e in events[:12]]


def phase_service(plan: Plan, rec: Recorder) -> None:
    """bench/load_service.py: a local server per batching mode (one run each, so each keeps its numbers)."""
    device = resolve_device(plan.device)
    base = [sys.executable, str(REPO / "bench" / "load_service.py"), "--model", plan.service_model,
            "--device", device, "--grid", str(plan.service_grid), "--frames", str(plan.frames),
            "--steps", str(plan.steps), "--duration", str(plan.service_duration_s),
            "--concurrency", *map(str, plan.service_concurrency), "--startup-timeout", "90"]
    rec.put("setup", {"device": device, "command": " ".join(base[1:]) + " --batching on|off",
                      "batching": "on = NOWCAST_MAX_BATCH=8, NOWCAST_BATCH_WINDOW_MS=5; off = NOWCAST_MAX_BATCH=1",
                      "precision": "NOWCAST_HALF_PRECISION=auto (the service picks fp16 on CUDA where within "
                                   "tolerance)"})
    load: dict[str, Any] = {"results": []}
    rec.data["load"] = load
    for batching in ("on", "off"):
        with rec.step(f"batching_{batching}", rec.data) as out:
            json_out = rec.path.with_name(f"load-service-{batching}.json")
            started = time.perf_counter()
            # its output goes to the phase's log; the phase's own limit stops it
            done = subprocess.run([*base, "--batching", batching, "--json-out", str(json_out)], cwd=REPO)
            out.update({"returncode": done.returncode, "seconds": round(time.perf_counter() - started, 1)})
            if json_out.is_file():
                measured = json.loads(json_out.read_text())
                load.update({k: v for k, v in measured.items() if k != "results"})
                load["results"] += measured["results"]
            if done.returncode != 0:
                raise RuntimeError(f"load_service.py exited {done.returncode} (errors counted in its results)")


PHASE_FUNCTIONS: dict[str, Callable[[Plan, Recorder], None]] = {
    "env": phase_env, "pytest_cuda": phase_pytest_cuda, "parity": phase_parity, "latency": phase_latency,
    "memory": phase_memory, "ensemble": phase_ensemble, "breakdown": phase_breakdown, "service": phase_service,
}


def run_phase_here(name: str, plan: Plan, out_path: Path) -> int:
    """The child side: run one phase and leave its result in ``out_path``."""
    rec = Recorder(out_path)
    status_path = out_path.with_suffix(".status")
    try:
        PHASE_FUNCTIONS[name](plan, rec)
    except Exception as exc:
        rec.errors += 1
        rec.data["error"] = error_text(exc)
        rec.data["traceback"] = traceback.format_exc(limit=8)[-4000:]
        traceback.print_exc()
    rec.save()
    status_path.write_text("ok" if rec.errors == 0 else f"errors:{rec.errors}")
    return 0


# ---------------------------------------------------------------------------------------------
# the parent: runs the phases one after the other, bounded, and writes the report
# ---------------------------------------------------------------------------------------------


def dump_json(data: Any) -> str:
    def clean(value: Any) -> Any:
        if isinstance(value, float):
            return value if math.isfinite(value) else None
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        if hasattr(value, "item"):  # numpy scalars
            return clean(value.item())
        return value

    return json.dumps(clean(data), indent=2)


def run_phase_child(name: str, plan: Plan, workdir: Path, timeout_s: float, log: Any) -> dict[str, Any]:
    out_path = workdir / f"{name}.json"
    status_path = out_path.with_suffix(".status")
    command = [sys.executable, str(Path(__file__).resolve()), "--run-phase", name,
               "--phase-out", str(out_path), "--plan-json", json.dumps(asdict(plan))]
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    started = time.perf_counter()
    log.write(f"\n===== phase {name} (limit {timeout_s:.0f} s) =====\n")
    log.flush()
    with tempfile.TemporaryFile(mode="w+") as output:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # its own group: a timeout ends the servers it starts
        try:
            returncode: int | None = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            returncode = None
        with contextlib.suppress(ProcessLookupError):  # whatever it left behind in its group
            os.killpg(process.pid, signal.SIGKILL)
        output.seek(0)
        text = output.read()
    log.write(text)
    log.flush()
    seconds = round(time.perf_counter() - started, 1)
    result = json.loads(out_path.read_text()) if out_path.is_file() else {}
    status_text = status_path.read_text() if status_path.is_file() else ""
    if returncode is None:
        status = "timeout"
    elif status_text == "ok":
        status = "ok"
    elif status_text.startswith("errors"):
        status = "errors"
    else:
        status = "crashed"
    entry: dict[str, Any] = {"status": status, "seconds": seconds, "limit_s": round(timeout_s), "result": result}
    if status != "ok":
        entry["log_tail"] = text[-3000:]
    return entry


def summary_markdown(report: dict[str, Any]) -> str:
    phases = report["phases"]
    env = phases.get("env", {}).get("result", {})
    gpu = env.get("gpu", {}).get("name") or "none"
    lines = [f"# GPU check ({'quick' if report['plan']['quick'] else 'full'}), {report['finished']}", "",
             f"- device: **{env.get('device', '?')}**; GPU: {gpu}; nvidia-smi -L: `{env.get('nvidia_smi_L', '?')}`",
             f"- torch {env.get('torch', '?')} (CUDA build {env.get('torch_cuda_build')}), python "
             f"{env.get('python', '?')}, {env.get('cpu_count', '?')} CPU cores; TF32 cuDNN {env.get('tf32_cudnn')}",
             f"- total {report['seconds']} s; phases: "
             + ", ".join(f"{k} {v['status']} ({v['seconds']} s)" for k, v in phases.items()), ""]
    if not str(env.get("device", "")).startswith("cuda"):
        lines += ["**No CUDA device: these are CPU numbers, taken to prove the check runs; they are not GPU "
                  "measurements.**", ""]
    pytest_result = phases.get("pytest_cuda", {}).get("result", {})
    if pytest_result.get("counts"):
        lines += [f"## tests/test_cuda.py: {pytest_result['counts']}", ""]
        skipped = [t["message"] for t in pytest_result.get("tests", []) if t["outcome"] == "skipped"]
        if skipped:
            lines += [f"skip reason: {skipped[0]}", ""]
    parity = phases.get("parity", {}).get("result", {}).get("models", {})
    if parity:
        lines += ["## Device vs CPU, one forecast per model", "",
                  "| model | variant | max abs mm/h | mean abs mm/h | CSI 1 mm/h | verdict | s |",
                  "| --- | --- | ---: | ---: | ---: | --- | ---: |"]
        for model, variants in parity.items():
            if "error" in variants:
                lines.append(f"| {model} | error: {variants['error'][:80]} | | | | | |")
                continue
            for variant, value in variants.items():
                if not isinstance(value, dict):
                    continue
                if "error" in value:
                    lines.append(f"| {model} | {variant} | error: {value['error'][:60]} | | | | |")
                elif "vs_cpu_fp32" in value:
                    c = value.get("vs_device_fp32", value["vs_cpu_fp32"])
                    against = "vs device fp32" if "vs_device_fp32" in value else "vs CPU"
                    lines.append(f"| {model} | {variant} ({against}) | {c['max_abs_mmh']:.4g} | "
                                 f"{c['mean_abs_mmh']:.3g} | {c['csi']['1mmh']:.4f} | {value['verdict']} | "
                                 f"{value['seconds']:.3f} |")
                elif "chosen" in value:
                    lines.append(f"| {model} | service half_precision=auto | chose {value['chosen']} | | | | |")
        lines.append("")
    latency = phases.get("latency", {}).get("result", {}).get("grids", {})
    if latency:
        lines += ["## Latency of one forecast (4 in, 12 out)", "", "| grid | precision | n | p50 ms | p99 ms |",
                  "| --- | --- | ---: | ---: | ---: |"]
        for grid, per in latency.items():
            for precision, t in per.items():
                lines.append(f"| {grid}² | {precision} | {t.get('n', '-')} | {t.get('p50_ms', t.get('error', '-'))}"
                             f" | {t.get('p99_ms', '-')} |")
        lines.append("")
    memory = phases.get("memory", {}).get("result", {}).get("cases", {})
    if memory:
        lines += ["## Memory per request", "", "| case | per request MiB | peak MiB |", "| --- | ---: | ---: |"]
        for case, m in memory.items():
            lines.append(f"| {case} | {m.get('per_request_mib', '-')} | "
                         f"{m.get('peak_mib', m.get('peak_rss_mib', m.get('error', '-')))} |")
        lines.append("")
    ensemble = phases.get("ensemble", {}).get("result", {})
    if ensemble.get("grids"):
        setup = ensemble.get("setup", {})
        lines += [f"## {setup.get('model')} with members={setup.get('members')}", "",
                  "| grid | n | p50 ms | per request MiB |", "| --- | ---: | ---: | ---: |"]
        for grid, e in ensemble["grids"].items():
            lines.append(f"| {grid}² | {e.get('n', '-')} | {e.get('p50_ms', e.get('error', '-'))} | "
                         f"{e.get('per_request_mib', e.get('peak_rss_mib', '-'))} |")
        lines.append("")
    breakdown = phases.get("breakdown", {}).get("result", {})
    for key, value in breakdown.items():
        if key.startswith("batch") and isinstance(value, dict) and "seconds" in value:
            lines += [f"## Where a request's time goes ({key}, {breakdown['setup']['grid']}²)", "",
                      "| part | s | share |", "| --- | ---: | ---: |"]
            lines += [f"| {part} | {s} | {value['share'][part]:.0%} |" for part, s in value["seconds"].items()]
            lines.append("")
    load = phases.get("service", {}).get("result", {}).get("load", {})
    if load.get("results"):
        lines += [f"## Service throughput ({load.get('model')}, {load.get('grid')}²)", "",
                  "| batching | clients | req/s | p50 ms | p99 ms | mean batch | errors |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {r['batching']} | {r['concurrency']} | {r['requests_per_s']} | {r['p50_ms']} | {r['p99_ms']} | "
                  f"{r['mean_batch']} | {r['errors']} |" for r in load["results"]]
        lines.append("")
    failed = {k: v for k, v in phases.items() if v["status"] != "ok"}
    if failed:
        lines += ["## Phases not ok", ""]
        lines += [f"- {k}: {v['status']} after {v['seconds']} s (limit {v.get('limit_s', '-')} s): "
                  f"{(v['result'].get('error') or v.get('log_tail', '')[-300:]).strip()}" for k, v in failed.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cuda, cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="small grids and short runs")
    parser.add_argument("--out", type=Path, help="folder for the report (default: $OUT, else runs/gpu-check)")
    parser.add_argument("--budget-s", type=float, help="the whole run's limit (default 420 s, quick 600 s)")
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=PHASES)
    parser.add_argument("--models", nargs="+", default=[], help="models of the parity phase (default: all)")
    parser.add_argument("--run-phase", choices=PHASES, help=argparse.SUPPRESS)
    parser.add_argument("--phase-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--plan-json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.run_phase:
        return run_phase_here(args.run_phase, Plan(**json.loads(args.plan_json)), args.phase_out)

    plan = Plan.make(args.device, args.quick)
    plan.models = args.models
    out = args.out or Path(os.environ.get("OUT") or REPO / "runs" / "gpu-check")
    out.mkdir(parents=True, exist_ok=True)
    budget = args.budget_s or (600.0 if args.quick else 420.0)
    began = time.perf_counter()
    report: dict[str, Any] = {"started": datetime.now(UTC).isoformat(timespec="seconds"), "plan": asdict(plan),
                              "budget_s": budget, "tolerances": {"fp32_vs_cpu": FP32_TOLERANCE,
                                                                 "half_vs_fp32": HALF_TOLERANCE},
                              "setup": os.environ.get("GPU_CHECK_SETUP", "bench/gpu_check.py run directly"),
                              "phases": {}}
    log_path = out / "gpu-check.log"
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work, log_path.open("a") as log:
        for name in args.phases:
            left = budget - (time.perf_counter() - began)
            if left < 15:
                report["phases"][name] = {"status": "skipped", "seconds": 0, "result": {},
                                          "log_tail": f"out of budget ({budget:.0f} s)"}
                continue
            limit = min(PHASE_TIMEOUT_S[name], left)
            entry = run_phase_child(name, plan, Path(work), limit, log)
            report["phases"][name] = entry
            print(f"phase {name:<12} {entry['status']:<8} {entry['seconds']:7.1f} s", flush=True)
            report["seconds"] = round(time.perf_counter() - began, 1)
            report["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
            (out / "gpu-check.json").write_text(dump_json(report))  # after every phase: a killed run keeps it
    report["seconds"] = round(time.perf_counter() - began, 1)
    report["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    env = report["phases"].get("env", {}).get("result", {})
    report["gpu_measured"] = str(env.get("device", "")).startswith("cuda")
    report["gpu"] = env.get("gpu", {}).get("name")
    (out / "gpu-check.json").write_text(dump_json(report))
    markdown = summary_markdown(report)
    (out / "gpu-check.md").write_text(markdown)
    print(markdown)
    print(f"wrote {out / 'gpu-check.json'}, {out / 'gpu-check.md'}, {log_path}")
    return 0 if all(p["status"] == "ok" for p in report["phases"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
