"""What the numbers were measured on: CPU model and cores, GPU name, library versions, matmul peak.

The MFU denominator is **measured** on the card at hand (:func:`measure_matmul_peak`, an 8192^3
bf16 matmul: 786-793 TFLOP/s on an H100 80GB HBM3, BENCHMARKS.md), not read from a datasheet.
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any

import torch


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, ``platform`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_cores() -> int:
    """CPU cores this process may use (affinity-aware where the OS supports it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def describe_hardware(device: str | torch.device = "cpu") -> dict[str, Any]:
    """A plain dict describing the machine and software a benchmark ran on."""
    import timm
    import torchvision

    device = torch.device(device)
    info: dict[str, Any] = {
        "cpu_model": cpu_model(), "cpu_cores": cpu_cores(), "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(), "python": platform.python_version(),
        "torch": torch.__version__, "torchvision": torchvision.__version__, "timm": timm.__version__,
        "cuda_runtime": torch.version.cuda, "device": str(device), "gpu_name": None, "gpu_count": 0,
        "gpu_memory_bytes": None,
    }
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device={device} requested but no CUDA device is available")
        idx = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        info.update(gpu_name=props.name, gpu_count=torch.cuda.device_count(),
                    gpu_memory_bytes=int(props.total_memory),
                    gpu_capability=f"{props.major}.{props.minor}")
    return info


def hardware_line(info: dict[str, Any]) -> str:
    """One human-readable line from :func:`describe_hardware`'s dict."""
    where = f"{info['gpu_name']} (x{info['gpu_count']})" if info.get("gpu_name") else "no GPU"
    return (f"{where}; CPU {info['cpu_model']}, {info['cpu_cores']} cores; torch {info['torch']}, "
            f"torchvision {info['torchvision']}, timm {info['timm']}")


def measure_matmul_peak(device: str | torch.device = "cuda", n: int = 8192, dtype: torch.dtype = torch.bfloat16,
                        iters: int = 20, warmup: int = 3) -> float:
    """Achieved FLOP/s of an ``n x n @ n x n`` matmul in ``dtype`` (2 n^3 FLOPs each), median of ``iters``.

    On CUDA it is timed with CUDA events and one synchronisation at the end. On CPU it works too (use
    float32 and a smaller n), but the result is only a reference: MFU is not reported on CPU.
    """
    device = torch.device(device)
    if n < 1 or iters < 1 or warmup < 0:
        raise ValueError(f"measure_matmul_peak: n={n}, iters={iters}, warmup={warmup} must be positive")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={device} requested but no CUDA device is available")
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    flops = 2.0 * n ** 3
    for _ in range(warmup):
        torch.mm(a, b)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        for s, e in zip(starts, ends):
            s.record()
            torch.mm(a, b)
            e.record()
        torch.cuda.synchronize(device)
        times = sorted(s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends))
    else:
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - t0)
        times.sort()
    return flops / times[len(times) // 2]


__all__ = ["cpu_cores", "cpu_model", "describe_hardware", "hardware_line", "measure_matmul_peak"]
