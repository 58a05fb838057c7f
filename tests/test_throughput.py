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
        assert not {"mfu", "mfu_spec", "mfu_measured"} & set(r)  # no MFU on CPU
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
    assert row["precision"] == "bf16" and 0 < row["mfu_measured"] < 1 and row["peak_mem_kind"].startswith("torch.cuda")
    assert row["mfu_measured"] == pytest.approx(row["achieved_gflop_per_s"] * 1e9 / 1e14)
    if report["spec_peak_flops"]:  # a card in the spec table (H100, H200, A100, ...)
        assert row["mfu_spec"] == pytest.approx(row["achieved_gflop_per_s"] * 1e9 / report["spec_peak_flops"])


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


# ---- MFU against the spec peak (fake device names) ----------------------------------------------------


@pytest.mark.parametrize("name, card, tflops", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.4), ("NVIDIA H200", "H200 SXM", 989.4),
    ("NVIDIA H100 PCIe", "H100 PCIe", 756.5), ("NVIDIA H100 NVL", "H100 NVL", 835.5),
    ("NVIDIA A100-SXM4-80GB", "A100", 312.0), ("NVIDIA A100 80GB PCIe", "A100", 312.0),
    ("NVIDIA L40S", "L40S", 362.05), ("NVIDIA A10", "A10", 125.0),
    ("NVIDIA GeForce RTX 4090", "GeForce RTX 4090", 165.2),
])
def test_spec_peak_matches_device_names(name, card, tflops):
    from canbench.benchmarks.perf.hardware import spec_peak

    peak = spec_peak(name)
    assert peak is not None and (peak.card, peak.tflops) == (card, tflops)
    assert peak.source.startswith("NVIDIA") and "sparsity" in peak.source  # the document, and dense vs sparse


@pytest.mark.parametrize("name", ["NVIDIA A10G", "Tesla V100-SXM2-16GB", "NVIDIA B200", "", None])
def test_spec_peak_unknown_devices(name):
    from canbench.benchmarks.perf.hardware import spec_peak

    assert spec_peak(name) is None  # never a guessed figure (A10G is not an A10, nor an A100)


def test_mfu_fields_and_table_label_both_peaks():
    from canbench.benchmarks.perf.throughput import mfu_fields

    achieved = 2.9e14  # FLOP/s
    assert mfu_fields(achieved, 7.9e14, 989.4e12) == pytest.approx({"mfu_spec": achieved / 989.4e12,
                                                                    "mfu_measured": achieved / 7.9e14})
    assert mfu_fields(achieved, 7.9e14, None) == pytest.approx({"mfu_measured": achieved / 7.9e14})
    row = {"method": "can", "arch": "vit_base", "img_size": 224, "patch_size": 16, "batch": 128, "accum": 1,
           "precision": "bf16", "compile": True, "data": "synthetic", "img_per_s": 1721.0, "img_per_s_wall": 1700.0,
           "step_ms_median": 74.4, "train_gflop_per_img": 168.5, "achieved_gflop_per_s": 1721.0 * 168.5,
           "peak_mem_bytes": 2 ** 34, **mfu_fields(1721.0 * 168.5e9, 7.9e14, 989.4e12)}
    report = {"rows": [row], "peak_flops": 7.9e14, "peak_flops_source": "measured 8192^3 bf16 matmul",
              "spec_peak_flops": 989.4e12, "spec_peak_card": "H100 SXM", "spec_peak_source": "datasheet",
              "hardware": {"device": "cuda:0", "gpu_name": "NVIDIA H100 80GB HBM3", "gpu_count": 1,
                           "cpu_model": "x", "cpu_cores": 16, "torch": "2", "torchvision": "0", "timm": "1"}}
    table = format_throughput_table(report)
    assert "MFU spec" in table and "MFU meas" in table
    assert " 0.293 " in table and " 0.367 " in table  # 1,721 img/s x 168.5 GFLOP / 989.4 and / 790 TFLOP/s
    assert "H100 SXM dense bf16" in table
    report.update(spec_peak_flops=None, spec_peak_card=None, spec_peak_source=None)
    report["hardware"]["gpu_name"] = "NVIDIA Mystery 1"
    report["rows"][0].pop("mfu_spec")
    assert "MFU spec: omitted, 'NVIDIA Mystery 1' is not in the spec-peak table" in format_throughput_table(report)


# ---- model-step levers ---------------------------------------------------------------------------------


def test_lever_options_are_checked():
    from canbench.train.step import StepLevers

    with pytest.raises(ConfigError, match="compile_mode='max-autotune' needs compile=True"):
        ThroughputOptions(compile_mode="max-autotune")
    with pytest.raises(ConfigError, match="compile_mode='fast'"):
        ThroughputOptions(compile=True, compile_mode="fast")
    with pytest.raises(ConfigError, match="adamw='apex'"):
        ThroughputOptions(adamw="apex")
    with pytest.raises(ConfigError, match="compile_norm_mlp=True is a lever of the eager step"):
        ThroughputOptions(compile=True, compile_norm_mlp=True)
    assert ThroughputOptions(compile=True, compile_mode="reduce-overhead", adamw="foreach").levers() == \
        StepLevers(compile_mode="reduce-overhead", adamw="foreach")


def test_adamw_implementations_and_channels_last_give_the_same_step(tiny_overrides):
    """fused / foreach / loop AdamW and a channels-last patch embedding: the same parameters after a step (one:
    Adam's normalised update turns rounding-level gradient differences of later steps into lr-sized ones)."""
    from canbench.train.step import StepLevers, TrainStep

    cfg = build_config("can", "smoke", tiny_overrides + ["train.device=cpu"], validate_paths=False)
    device = torch.device("cpu")
    batches = list(synthetic_inputs(cfg, 4, 1, device))
    params = {}
    for name, levers in [("loop", StepLevers(adamw="loop")), ("foreach", StepLevers(adamw="foreach")),
                         ("fused", StepLevers(adamw="fused")), ("channels_last", StepLevers(channels_last=True))]:
        step = TrainStep(cfg, device, levers=levers)
        if name == "channels_last":
            w = step.method.encoder.patch_embed.proj.weight
            assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
        else:
            group = step.optimizer.defaults
            assert bool(group.get("fused")) == (name == "fused") and bool(group.get("foreach")) == (name == "foreach")
        for b in batches:
            step(b, 1e-3)
        params[name] = torch.cat([p.detach().flatten() for p in step.method.parameters()])
    for name in ("foreach", "fused", "channels_last"):
        assert torch.allclose(params[name], params["loop"], rtol=0, atol=1e-6), name
    assert not torch.equal(params["loop"], torch.cat([p.detach().flatten() for p in
                                                      TrainStep(cfg, device).method.parameters()]))  # it moved


def test_compile_norm_mlp_wraps_every_norm_and_mlp(tiny_overrides):
    from timm.layers import Mlp

    from canbench.train.step import StepLevers, TrainStep

    cfg = build_config("mae", "smoke", tiny_overrides + ["train.device=cpu"], validate_paths=False)
    step = TrainStep(cfg, torch.device("cpu"), levers=StepLevers(compile_norm_mlp=True))
    targets = [m for m in step.method.modules() if isinstance(m, (torch.nn.LayerNorm, Mlp))]
    assert any(isinstance(m, Mlp) for m in targets) and any(isinstance(m, torch.nn.LayerNorm) for m in targets)
    assert all(getattr(m, "_compiled_call_impl", None) is not None for m in targets)
    others = [m for m in step.method.modules() if isinstance(m, torch.nn.Linear) and m not in
              {x for t in targets for x in t.modules()}]
    assert others and all(getattr(m, "_compiled_call_impl", None) is None for m in others)  # the rest stays eager


def test_rng_cost_times_the_methods_draws(tiny_overrides):
    from canbench.benchmarks.perf.throughput import rng_cost_ms

    draws = {}
    for m in ("can", "simclr", "mae"):
        cfg = build_config(m, "smoke", tiny_overrides, validate_paths=False)
        out = rng_cost_ms(cfg, 4, torch.device("cpu"), repeats=2)
        assert out["rng_counter_ms"] >= 0 and out["rng_torch_ms"] >= 0
        draws[m] = out["rng_draws"]
    assert draws == {"can": ["mask", "noise"], "simclr": [], "mae": ["mask"]}


def test_cli_throughput_levers(capsys, tiny_overrides):
    argv = ["throughput", "--arch", "vit_micro", "--device", "cpu", "--methods", "can", "--batch", "4", "--steps",
            "1", "--warmup", "0", "--json", "--adamw", "foreach", "--channels-last", "--rng-cost"]
    assert main(argv + [a for o in tiny_overrides for a in ("--set", o)]) == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert (row["adamw"], row["channels_last"], row["compile_mode"], row["compile"]) == ("foreach", True, None, False)
    assert row["rng_draws"] == ["mask", "noise"] and row["rng_counter_ms"] > 0
