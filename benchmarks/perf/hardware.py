"""What the numbers were measured on: CPU model and cores, GPU name, library versions, matmul peak.

Two MFU denominators, reported side by side and labelled: the **measured** peak of the card at hand
(:func:`measure_matmul_peak`, an 8192^3 bf16 matmul: 786-793 TFLOP/s on an H100 80GB HBM3,
BENCHMARKS.md) and the vendor's **spec** peak (:data:`SPEC_BF16_TFLOPS`, dense bf16 tensor-core
TFLOP/s from the datasheet, what public MFU figures such as nanoGPT's ``estimate_mfu``, torchtitan and
NeMo divide by). The spec peak is matched from the device name (:func:`spec_peak`); a card not in the
table gets no spec MFU, never a guessed one.
"""

from __future__ import annotations

import os
import platform
import re
import time
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class SpecPeak:
    """A card's dense bf16 tensor-core peak as its vendor states it."""

    card: str  # the card the figure is for, e.g. "H100 SXM"
    tflops: float  # dense (no structured sparsity), bf16 inputs, fp32 accumulate
    source: str  # where the figure comes from


# Datasheets state the sparse figure first ("1,979 TFLOPS*", * = with sparsity); dense is half of it.
# First match wins: the PCIe / NVL variants are listed before the SXM part whose name they contain.
_H100_DS = "NVIDIA H100 Tensor Core GPU datasheet"
_H200_DS = "NVIDIA H200 Tensor Core GPU datasheet"
SPEC_BF16_TFLOPS: tuple[tuple[str, SpecPeak], ...] = (
    (r"H100.*PCIe", SpecPeak("H100 PCIe", 756.5, f"{_H100_DS}: BF16 Tensor Core 1,513 TFLOPS with sparsity")),
    (r"H100.*NVL", SpecPeak("H100 NVL", 835.5, f"{_H100_DS}: BF16 Tensor Core 1,671 TFLOPS with sparsity")),
    (r"H200.*NVL", SpecPeak("H200 NVL", 835.5, f"{_H200_DS}: BF16 Tensor Core 1,671 TFLOPS with sparsity")),
    (r"GH200", SpecPeak("GH200", 989.4, "NVIDIA GH200 Grace Hopper Superchip datasheet: BF16 1,979 TFLOPS "
                                        "with sparsity")),
    (r"H100", SpecPeak("H100 SXM", 989.4, f"{_H100_DS}: BF16 Tensor Core 1,979 TFLOPS with sparsity")),
    (r"H200", SpecPeak("H200 SXM", 989.4, f"{_H200_DS}: BF16 Tensor Core 1,979 TFLOPS with sparsity")),
    (r"A100", SpecPeak("A100", 312.0, "NVIDIA A100 Tensor Core GPU datasheet: BFLOAT16 Tensor Core 312 TFLOPS "
                                      "(624 with sparsity)")),
    (r"L40S", SpecPeak("L40S", 362.05, "NVIDIA L40S datasheet: BF16 Tensor Core 362.05 TFLOPS (733 with sparsity)")),
    (r"\bA10\b", SpecPeak("A10", 125.0, "NVIDIA A10 Tensor Core GPU datasheet: BF16 Tensor Core 125 TFLOPS "
                                       "(250 with sparsity)")),
    (r"RTX 4090", SpecPeak("GeForce RTX 4090", 165.2, "NVIDIA Ada Lovelace architecture whitepaper, "
                                                      "appendix A: peak BF16 Tensor TFLOPS with FP32 accumulate "
                                                      "165.2 (330.4 with sparsity)")),
)


def spec_peak(gpu_name: str | None) -> SpecPeak | None:
    """The vendor's dense bf16 peak for a device name as ``torch.cuda.get_device_name`` gives it
    (``"NVIDIA H100 80GB HBM3"`` -> H100 SXM, 989.4 TFLOP/s); ``None`` for a card not in
    :data:`SPEC_BF16_TFLOPS` (no GPU, or an unlisted one: then no spec MFU is reported)."""
    if not gpu_name:
        return None
    for pattern, peak in SPEC_BF16_TFLOPS:
        if re.search(pattern, gpu_name, flags=re.IGNORECASE):
            return peak
    return None


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


__all__ = ["SPEC_BF16_TFLOPS", "SpecPeak", "cpu_cores", "cpu_model", "describe_hardware", "hardware_line",
           "measure_matmul_peak", "spec_peak"]
