"""Throughput benchmark on CPU: table fields, JSON schema, MFU omitted on CPU, data modes (no timing asserts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torchvision.io import encode_jpeg

from canbench.benchmarks.perf.hardware import describe_hardware, hardware_line, measure_matmul_peak
from canbench.benchmarks.perf.throughput import (
    ThroughputOptions,
    format_throughput_table,
    parse_data_spec,
    resolve_device,
    run_throughput_suite,
    synthetic_inputs,
    time_steps,
)
from canbench.cli import main
from canbench.config import ConfigError
from canbench.train.recipe import build_config

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")

ROW_KEYS = {"method", "arch", "img_size", "patch_size", "views", "batch", "accum", "device", "precision", "compile",
            "data", "workers", "steps", "warmup", "img_per_s", "img_per_s_wall", "step_ms_median", "step_ms_min",
            "step_ms_max", "fwd_gflop_per_img", "train_gflop_per_img", "achieved_gflop_per_s", "peak_mem_bytes",
            "peak_mem_kind", "img_per_s_ratio_to_can"}
HW_KEYS = {"cpu_model", "cpu_cores", "torch", "torchvision", "timm", "gpu_name", "device"}


def _cfgs(tiny: list[str], methods=("can", "simclr", "mae")):
    return {m: build_config(m, "smoke", tiny, validate_paths=False) for m in methods}


# the model part of conftest's TINY overrides (a module-scoped fixture cannot use the function-scoped one)
TINY_MODEL = ["model.decoder_dim=32", "model.decoder_depth=1", "model.decoder_heads=2", "model.proj_hidden=64",
              "model.proj_out=16", "model.img_size=16", "model.patch_size=4"]


@pytest.fixture(scope="module")
def cpu_report() -> dict:
    opts = ThroughputOptions(batch=4, device="cpu", steps=2, warmup=0)
    return run_throughput_suite(_cfgs(TINY_MODEL), opts)


def test_cpu_report_schema_and_no_mfu(cpu_report):
    json.dumps(cpu_report)  # JSON-serialisable as printed by --json
    assert set(cpu_report) >= {"hardware", "options", "peak_flops", "rows"}
    assert HW_KEYS <= set(cpu_report["hardware"]) and cpu_report["hardware"]["gpu_name"] is None
    assert cpu_report["peak_flops"] is None
    rows = cpu_report["rows"]
    assert [r["method"] for r in rows] == ["can", "simclr", "mae"]
    for r in rows:
        assert ROW_KEYS <= set(r), ROW_KEYS - set(r)
        assert "mfu" not in r  # no MFU on CPU
        assert r["device"] == "cpu" and r["precision"] == "fp32" and r["batch"] == 4 and r["steps"] == 2
        assert r["img_per_s"] > 0 and r["step_ms_min"] <= r["step_ms_median"] <= r["step_ms_max"]
        assert r["img_per_s"] == pytest.approx(4 / (r["step_ms_median"] / 1e3))
        assert r["train_gflop_per_img"] > r["fwd_gflop_per_img"] > 0
        assert r["achieved_gflop_per_s"] == pytest.approx(r["train_gflop_per_img"] * r["img_per_s"])
        assert r["peak_mem_kind"] == "process max RSS"
    assert rows[0]["img_per_s_ratio_to_can"] == 1.0
    assert (rows[0]["views"], rows[1]["views"], rows[2]["views"]) == (2, 2, 1)


def test_cpu_table_text(cpu_report):
    text = format_throughput_table(cpu_report)
    header = text.splitlines()[0].split()
    for col in ("img/s", "step", "MFU", "GFLOP/s", "peak"):
        assert col in header
    assert "MFU: not reported on CPU" in text and "hardware:" in text
    assert all(line.split()[-3] == "-" for line in text.splitlines()[1:4])  # MFU column empty


def test_time_steps_counts_and_runs_warmup():
    calls = []
    cfg = build_config("mae", "smoke", validate_paths=False)
    inputs = synthetic_inputs(cfg, 2, 5, torch.device("cpu"))
    times, wall = time_steps(lambda b: calls.append(b["seed"].clone()), inputs, steps=3, warmup=2,
                             device=torch.device("cpu"))
    assert len(times) == 3 and len(calls) == 5 and wall >= sum(times)
    assert len({tuple(c.tolist()) for c in calls}) == 5  # fresh seeds every step


def test_accumulated_steps_are_timed_with_the_gradient_cache():
    report = run_throughput_suite(_cfgs(TINY_MODEL, ("simclr",)), ThroughputOptions(batch=8, accum=2, device="cpu",
                                                                                   steps=1, warmup=0))
    row = report["rows"][0]
    assert (row["batch"], row["accum"]) == (8, 2) and row["img_per_s"] > 0
    assert " 2 " in format_throughput_table(report).splitlines()[1]


def test_options_and_data_specs_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="steps=0"):
        ThroughputOptions(steps=0)
    with pytest.raises(ConfigError, match="'tpu'"):
        ThroughputOptions(device="tpu")
    with pytest.raises(ConfigError, match="unknown kind 'webdataset'"):
        parse_data_spec("webdataset:/x")
    with pytest.raises(ConfigError, match="needs a folder"):
        parse_data_spec("jpeg")
    with pytest.raises(ConfigError, match="is not a directory"):
        parse_data_spec(f"jpeg-gpu:{tmp_path / 'missing'}")
    assert parse_data_spec(f"jpeg:{tmp_path}") == ("jpeg", str(tmp_path))
    assert parse_data_spec("builtin") == ("builtin", None)
    with pytest.raises(ConfigError, match="accum=3 must be >= 1 and divide batch=8"):
        ThroughputOptions(batch=8, accum=3)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device("cuda")


def test_cli_throughput_json(capsys, tiny_overrides):
    argv = ["throughput", "--arch", "vit_micro", "--device", "cpu", "--methods", "mae", "--batch", "4",
            "--steps", "1", "--warmup", "0", "--json"] + [a for o in tiny_overrides for a in ("--set", o)]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    (row,) = report["rows"]
    assert row["method"] == "mae" and row["img_size"] == 16 and "mfu" not in row


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tp_jpegs")
    for c in range(2):
        (root / f"c{c}").mkdir()
        for i in range(4):
            img = torch.randint(0, 256, (3, 24 + 4 * i, 30 - 2 * i), dtype=torch.uint8)
            (root / f"c{c}" / f"{i}.jpg").write_bytes(encode_jpeg(img).numpy().tobytes())
    return root


@pytest.mark.parametrize("data", [pytest.param("builtin", marks=pytest.mark.slow),
                                  pytest.param("jpeg", marks=pytest.mark.slow), "jpeg-gpu"])
def test_end_to_end_modes_on_cpu(data, jpeg_folder, tiny_overrides):
    spec = data if data == "builtin" else f"{data}:{jpeg_folder}"
    opts = ThroughputOptions(batch=4, device="cpu", steps=1, warmup=0, data=spec, workers=0)
    report = run_throughput_suite(_cfgs(tiny_overrides, ("mae",)), opts)
    (row,) = report["rows"]
    assert row["data"] == spec and row["img_per_s"] > 0 and "mfu" not in row


def test_data_only_times_the_pipeline_without_a_model(jpeg_folder, tiny_overrides):
    opts = ThroughputOptions(batch=4, device="cpu", steps=2, warmup=0, data=f"jpeg-gpu:{jpeg_folder}",
                             workers=0, data_only=True)
    report = run_throughput_suite(_cfgs(tiny_overrides, ("can",)), opts)
    (row,) = report["rows"]
    assert row["data_only"] and row["achieved_gflop_per_s"] is None and row["img_per_s"] > 0
    assert "data only" in format_throughput_table(report)
    with pytest.raises(ConfigError, match="data_only"):
        ThroughputOptions(data_only=True)


def test_hardware_description():
    info = describe_hardware("cpu")
    assert info["cpu_cores"] >= 1 and info["cpu_model"] and info["gpu_name"] is None
    assert "no GPU" in hardware_line(info)
    assert measure_matmul_peak("cpu", n=64, dtype=torch.float32, iters=2, warmup=1) > 0
    with pytest.raises(ValueError, match="n=0"):
        measure_matmul_peak("cpu", n=0)


@pytest.mark.gpu
def test_cuda_report_has_mfu(tiny_overrides):
    opts = ThroughputOptions(batch=8, device="cuda", steps=2, warmup=1, peak_flops=1e14)
    report = run_throughput_suite(_cfgs(tiny_overrides, ("can",)), opts)
    (row,) = report["rows"]
    assert row["precision"] == "bf16" and 0 < row["mfu"] < 1 and row["peak_mem_kind"].startswith("torch.cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["can", "simclr", "mae"])
def test_cuda_step_has_no_host_sync(method, tiny_overrides):
    """The timed model step must not synchronise the host (only time_steps' final synchronize does)."""
    from canbench.benchmarks.perf.throughput import TrainStep

    cfg = build_config(method, "smoke", tiny_overrides + ["train.device=cuda"], validate_paths=False)
    step = TrainStep(cfg, torch.device("cuda"))
    inputs = synthetic_inputs(cfg, 8, 3, torch.device("cuda"))
    step(next(inputs))  # first step: lazy optimizer state and cuBLAS handles
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step(next(inputs))
        step(next(inputs))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
