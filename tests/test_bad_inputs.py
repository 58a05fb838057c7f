"""The bad-input sweep, through the real command line: every bad file, path or value ends in one
``canbench: error: ...`` line naming it (exit 2, or the documented code), never a traceback, and nothing
already computed changes on disk. Plus the documented behaviours that are not errors: a torn evaluation
result is recomputed, unreadable images are replaced up to ``data.max_bad_images``, a diverged run exits 3."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from canbench.cli import main
from canbench.config import ConfigError
from canbench.data.datasets import (
    STREAM_REPLACE,
    BadImageError,
    BadImages,
    bad_image_limit,
    decode_rgb,
    read_or_replace,
    replacement_index,
)
from canbench.flags import EXIT_NONFINITE, EXIT_USAGE
from canbench.io import read_yaml
from canbench.rng import torch_generator

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = ["model.decoder_dim=32", "model.decoder_depth=1", "model.decoder_heads=2", "model.proj_hidden=64",
        "model.proj_out=16", "model.img_size=16", "model.patch_size=4", "data.builtin_size=64",
        "optim.batch_size=8", "train.log_every=1", "train.ckpt_every=2", "train.count_flops=false",
        "optim.max_steps=2"]


def sets(*items: str) -> list[str]:
    return sum([["--set", s] for s in items], [])


BOOKKEEPING = (".lock", ".status.lock")  # the run folder's locks: who holds it, not what it computed


def tree_hash(root: Path) -> dict[str, str] | None:
    """sha256 of every file under ``root`` (None when it does not exist); locks and the TensorBoard event files a
    starting logger opens are bookkeeping, not results, and are left out."""
    if not root.exists():
        return None
    if root.is_file():
        return {"": hashlib.sha256(root.read_bytes()).hexdigest()}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in BOOKKEEPING
            and p.relative_to(root).parts[0] != "tensorboard"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished 2-step SimCLR run folder (config, checkpoint, encoder, summary)."""
    out = tmp_path_factory.mktemp("bad_inputs") / "run"
    assert main(["pretrain", "simclr", "--preset", "smoke", "--out", str(out), *sets(*TINY)]) == 0
    return out


@dataclass
class Ctx:
    tmp: Path
    trained: Path
    run: Path = field(init=False)  # a private copy of the trained run

    def __post_init__(self) -> None:
        self.run = self.tmp / "run"
        shutil.copytree(self.trained, self.run)

    def write(self, name: str, text: str | bytes) -> Path:
        p = self.tmp / name
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
        return p


def _truncate(p: Path) -> None:
    b = p.read_bytes()
    p.write_bytes(b[: len(b) // 2])


def _zero(p: Path) -> None:
    p.write_bytes(b"")


def _random(p: Path) -> None:
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())


def _every_checkpoint(ctx: Ctx, damage: Callable[[Path], None]) -> None:
    """Damage every checkpoint of the copy (so no fallback to an older one can hide the error)."""
    for p in (ctx.run / "checkpoints").glob("*.pt"):
        damage(p)


SPEC_OK = "name: sweep\nbenchmark: smoke\nmethods: [can]\nsuites: [knn, linear]\nscales:\n  smoke:\n    preset: smoke\n"


@dataclass
class Case:
    id: str
    argv: Callable[[Ctx], list[str]]  # the command line (after any setup)
    needles: Callable[[Ctx], list[str]]  # what the one error line must name
    setup: Callable[[Ctx], None] = lambda ctx: None
    watch: Callable[[Ctx], Path] = lambda ctx: ctx.run  # a folder (or file) that must not change
    rc: int = EXIT_USAGE


def _resume(ctx: Ctx) -> list[str]:
    return ["pretrain", "simclr", "--preset", "smoke", "--out", str(ctx.run), "--resume", *sets(*TINY)]


def _submit_spec(c) -> list[str]:
    """``grid submit g.yaml`` (the case's spec) in-process, into ``store``."""
    return ["grid", "submit", str(c.tmp / "g.yaml"), "--executor", "debug", "--root", str(c.tmp / "store")]


def _pretrain(ctx: Ctx, *extra: str, preset: str = "smoke", method: str = "simclr") -> list[str]:
    return ["pretrain", method, "--preset", preset, "--out", str(ctx.tmp / "new"), *sets(*TINY, *extra)]


def _knn(ctx: Ctx, checkpoint: Path | None = None, *extra: str) -> list[str]:
    return ["evaluate", "knn", "--checkpoint", str(checkpoint or ctx.run), *extra]


CASES = [
    # --- YAML files: the file, line and column ---------------------------------------------------------
    Case("preset-syntax", lambda c: _pretrain(c, preset=str(c.tmp / "p.yaml")),
         lambda c: [f"{c.tmp / 'p.yaml'}:3:", "invalid YAML"],
         setup=lambda c: c.write("p.yaml", "scale: smoke\nconfig:\n  optim: {base_lr: 1]\n"),
         watch=lambda c: c.tmp / "new"),
    Case("preset-tab", lambda c: _pretrain(c, preset=str(c.tmp / "p.yaml")),
         lambda c: [f"{c.tmp / 'p.yaml'}:3:1:", "'\\t'"],
         setup=lambda c: c.write("p.yaml", "scale: smoke\nconfig:\n\toptim: {}\n"), watch=lambda c: c.tmp / "new"),
    Case("preset-list-not-mapping", lambda c: _pretrain(c, preset=str(c.tmp / "p.yaml")),
         lambda c: [str(c.tmp / "p.yaml"), "config", "expected a mapping"],
         setup=lambda c: c.write("p.yaml", "scale: smoke\nconfig: [1, 2]\n"), watch=lambda c: c.tmp / "new"),
    Case("preset-top-level-list", lambda c: _pretrain(c, preset=str(c.tmp / "p.yaml")),
         lambda c: [str(c.tmp / "p.yaml"), "expected a mapping"],
         setup=lambda c: c.write("p.yaml", "- smoke\n- small\n"), watch=lambda c: c.tmp / "new"),
    Case("preset-section-list", lambda c: _pretrain(c, preset=str(c.tmp / "p.yaml")),
         lambda c: [str(c.tmp / "p.yaml"), "optim", "expected a mapping"],
         setup=lambda c: c.write("p.yaml", "scale: smoke\nconfig:\n  optim: [1, 2]\n"), watch=lambda c: c.tmp / "new"),
    Case("grid-spec-syntax", _submit_spec,
         lambda c: [f"{c.tmp / 'g.yaml'}:7:", "invalid YAML"],
         setup=lambda c: c.write("g.yaml", SPEC_OK.replace("preset: smoke", "preset: [smoke}")),
         watch=lambda c: c.tmp / "store"),
    Case("grid-spec-tab", lambda c: ["grid", "plan", str(c.tmp / "g.yaml"), "--root", str(c.tmp / "store")],
         lambda c: [f"{c.tmp / 'g.yaml'}:7:1:", "'\\t'"],
         setup=lambda c: c.write("g.yaml", SPEC_OK.replace("    preset", "\tpreset")), watch=lambda c: c.tmp / "store"),
    Case("grid-spec-list-not-mapping", lambda c: ["grid", "plan", str(c.tmp / "g.yaml"), "--root", str(c.tmp / "s")],
         lambda c: [str(c.tmp / "g.yaml"), "scales must be a mapping"],
         setup=lambda c: c.write("g.yaml", SPEC_OK.split("scales:")[0] + "scales: [smoke]\n"),
         watch=lambda c: c.tmp / "s"),
    Case("run-config-syntax", lambda c: _knn(c), lambda c: [f"{c.run / 'config.yaml'}:1:", "invalid YAML"],
         setup=lambda c: (c.run / "config.yaml").write_text("model: {arch: vit_micro]\n")),
    Case("run-config-not-mapping", lambda c: _knn(c), lambda c: [str(c.run / "config.yaml"), "expected a mapping"],
         setup=lambda c: (c.run / "config.yaml").write_text("- 1\n- 2\n")),
    Case("run-config-section-list", lambda c: _knn(c), lambda c: [str(c.run / "config.yaml"), "model"],
         setup=lambda c: (c.run / "config.yaml").write_text(
             (c.run / "config.yaml").read_text().replace("model:\n", "model: [1]\nmodel_was:\n"))),
    Case("eval-preset-list", lambda c: _knn(c, None, "--preset", str(c.tmp / "e.yaml")),
         lambda c: [str(c.tmp / "e.yaml"), "expected a mapping"], setup=lambda c: c.write("e.yaml", "[1, 2]\n")),
    Case("eval-preset-pretrain-section-list", lambda c: _knn(c, None, "--preset", str(c.tmp / "e.yaml")),
         lambda c: [str(c.tmp / "e.yaml"), "config.model"],
         setup=lambda c: c.write("e.yaml", "scale: smoke\nconfig:\n  model: [1]\n")),
    Case("eval-preset-syntax", lambda c: _knn(c, None, "--preset", str(c.tmp / "e.yaml")),
         lambda c: [f"{c.tmp / 'e.yaml'}:1:", "invalid YAML"],
         setup=lambda c: c.write("e.yaml", "knn: {k: 1]\n")),
    Case("set-bad-yaml", lambda c: _pretrain(c, "optim.betas=[0.9,"), lambda c: ["optim.betas=[0.9,", "not valid YAML"],
         watch=lambda c: c.tmp / "new"),
    # --- checkpoints: zero-byte, truncated, random bytes --------------------------------------------------
    Case("resume-zero-byte", _resume, lambda c: [str(c.run / "checkpoints")],
         setup=lambda c: _every_checkpoint(c, _zero)),
    Case("resume-truncated", _resume, lambda c: [str(c.run / "checkpoints")],
         setup=lambda c: _every_checkpoint(c, _truncate)),
    Case("resume-random-bytes", _resume, lambda c: [str(c.run / "checkpoints")],
         setup=lambda c: _every_checkpoint(c, _random)),
    Case("evaluate-zero-byte", lambda c: _knn(c, c.tmp / "x.pt", "--out", str(c.tmp / "o")),
         lambda c: [str(c.tmp / "x.pt")], setup=lambda c: c.write("x.pt", b""), watch=lambda c: c.tmp / "o"),
    Case("evaluate-truncated", lambda c: _knn(c, c.tmp / "x.pt", "--out", str(c.tmp / "o")),
         lambda c: [str(c.tmp / "x.pt")],
         setup=lambda c: c.write("x.pt", (c.run / "checkpoints" / "last.pt").read_bytes()[:3000]),
         watch=lambda c: c.tmp / "o"),
    Case("evaluate-random-bytes", lambda c: _knn(c, c.tmp / "x.pt", "--out", str(c.tmp / "o")),
         lambda c: [str(c.tmp / "x.pt")], setup=lambda c: _random(c.write("x.pt", b"")), watch=lambda c: c.tmp / "o"),
    # --- paths and values ---------------------------------------------------------------------------------
    Case("out-is-a-file", lambda c: ["pretrain", "simclr", "--preset", "smoke", "--out", str(c.tmp / "f"),
                                     *sets(*TINY)],
         lambda c: [str(c.tmp / "f"), "is a file"], setup=lambda c: c.write("f", "keep me"),
         watch=lambda c: c.tmp / "f"),
    Case("out-under-a-file", lambda c: ["pretrain", "simclr", "--preset", "smoke", "--out", str(c.tmp / "f" / "r"),
                                        *sets(*TINY)],
         lambda c: [str(c.tmp / "f"), "which is a file"], setup=lambda c: c.write("f", "keep me"),
         watch=lambda c: c.tmp / "f"),
    Case("evaluate-out-is-a-file", lambda c: _knn(c, None, "--out", str(c.tmp / "f")),
         lambda c: [str(c.tmp / "f"), "is a file"], setup=lambda c: c.write("f", "keep me")),
    Case("base-lr-inf", lambda c: _pretrain(c, "optim.base_lr=.inf"), lambda c: ["optim.base_lr", "finite"],
         watch=lambda c: c.tmp / "new"),
    Case("temperature-inf", lambda c: _pretrain(c, "method.temperature=.inf"),
         lambda c: ["method.temperature", "finite"], watch=lambda c: c.tmp / "new"),
    Case("base-lr-nan", lambda c: _pretrain(c, "optim.base_lr=.nan"), lambda c: ["optim.base_lr", "finite"],
         watch=lambda c: c.tmp / "new"),
    Case("beta-inf", lambda c: _pretrain(c, "optim.betas=[0.9, .inf]"), lambda c: ["optim.betas", "finite"],
         watch=lambda c: c.tmp / "new"),
    Case("max-bad-images-negative", lambda c: _pretrain(c, "data.max_bad_images=-1"),
         lambda c: ["data.max_bad_images"], watch=lambda c: c.tmp / "new"),
    Case("resume-base-lr-inf", lambda c: [*_resume(c), "--set", "optim.base_lr=.inf"],
         lambda c: ["optim.base_lr", "finite"]),
    # --- grid specs: the whole spec, eval settings included, before anything is submitted ---------------
    Case("grid-eval-typo", _submit_spec,
         lambda c: ["knn.kk", "'k'"], setup=lambda c: c.write("g.yaml", SPEC_OK + "    eval: {knn.kk: 3}\n"),
         watch=lambda c: c.tmp / "store"),
    Case("grid-eval-typo-other-scale", _submit_spec,
         lambda c: ["scales.paper.eval", "linear.epoch"],
         setup=lambda c: c.write("g.yaml", SPEC_OK + "  paper:\n    preset: smoke\n    eval: {linear.epoch: 3}\n"),
         watch=lambda c: c.tmp / "store"),
    Case("grid-eval-out-of-range", _submit_spec,
         lambda c: ["linear.epochs"], setup=lambda c: c.write("g.yaml", SPEC_OK + "    eval: {linear.epochs: -1}\n"),
         watch=lambda c: c.tmp / "store"),
    Case("grid-eval-inf", _submit_spec,
         lambda c: ["linear.epochs", "finite"],
         setup=lambda c: c.write("g.yaml", SPEC_OK + "    eval: {linear.epochs: .inf}\n"),
         watch=lambda c: c.tmp / "store"),
    # --- already clean before this sweep (kept so they stay so) ------------------------------------------
    Case("unknown-set-key", lambda c: _pretrain(c, "method.lamda=0.5"), lambda c: ["method.lamda", "'lam'"],
         watch=lambda c: c.tmp / "new"),
    Case("unknown-preset", lambda c: _pretrain(c, preset="smok"), lambda c: ["'smok'", "smoke"],
         watch=lambda c: c.tmp / "new"),
    Case("missing-preset-file", lambda c: _pretrain(c, preset=str(c.tmp / "nope.yaml")),
         lambda c: [str(c.tmp / "nope.yaml")], watch=lambda c: c.tmp / "new"),
    Case("unknown-method", lambda c: _pretrain(c, method="simclrr"), lambda c: ["simclrr"],
         watch=lambda c: c.tmp / "new"),
    Case("negative-batch", lambda c: _pretrain(c, "optim.batch_size=-8"), lambda c: ["optim.batch_size"],
         watch=lambda c: c.tmp / "new"),
    Case("batch-not-divisible", lambda c: _pretrain(c, "optim.accum_steps=3"),
         lambda c: ["optim.batch_size=8", "accum_steps"], watch=lambda c: c.tmp / "new"),
    Case("mask-ratio-one", lambda c: _pretrain(c, "method.mask_ratio=1.0", method="mae"),
         lambda c: ["method.mask_ratio"], watch=lambda c: c.tmp / "new"),
    Case("ill-typed-value", lambda c: _pretrain(c, "optim.epochs=abc"), lambda c: ["optim.epochs", "'abc'"],
         watch=lambda c: c.tmp / "new"),
    Case("missing-checkpoint", lambda c: _knn(c, c.tmp / "nope.pt", "--out", str(c.tmp / "o")),
         lambda c: [str(c.tmp / "nope.pt")], watch=lambda c: c.tmp / "o"),
    Case("checkpoint-exists-without-resume", lambda c: ["pretrain", "simclr", "--preset", "smoke", "--out",
                                                        str(c.run), *sets(*TINY)],
         lambda c: [str(c.run), "--resume"]),
    Case("resume-changed-config", lambda c: [*_resume(c), "--set", "optim.max_steps=4"],
         lambda c: ["optim.max_steps"]),
    Case("unknown-grid-spec", lambda c: ["grid", "plan", "no_such_grid"], lambda c: ["no_such_grid"],
         watch=lambda c: c.tmp / "new"),
    Case("unknown-eval-key", lambda c: _knn(c, None, "--set", "knn.kk=3"), lambda c: ["knn.kk"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clean_error(case: Case, trained: Path, tmp_path: Path, capsys) -> None:
    ctx = Ctx(tmp_path, trained)
    case.setup(ctx)
    watched = case.watch(ctx)
    before = tree_hash(watched)
    capsys.readouterr()
    rc = main(case.argv(ctx))
    out, err = capsys.readouterr()
    assert rc == case.rc, (out, err)
    assert "Traceback" not in out + err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("canbench: error: "), err
    for needle in case.needles(ctx):
        assert needle in lines[0], (needle, lines[0])
    assert tree_hash(watched) == before  # nothing already computed was touched (or nothing was created)


# ---- YAML errors name the line and column --------------------------------------------------------------


def test_read_yaml_names_line_and_column(tmp_path: Path) -> None:
    p = tmp_path / "x.yaml"
    p.write_text("a: 1\nb:\n  c: [1, 2\n  d: 3\n")
    with pytest.raises(ConfigError) as e:
        read_yaml(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:4:") and "invalid YAML" in msg and "\n" not in msg
    p.write_text("")
    assert read_yaml(p, mapping=True) == {} and read_yaml(p) is None
    p.write_bytes(b"a: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not a UTF-8"):
        read_yaml(p)


# ---- a torn evaluation result is recomputed, and the run says so ---------------------------------------


def test_torn_eval_result_is_recomputed(trained: Path, tmp_path: Path, capsys, caplog) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    knn = ["evaluate", "knn", "--checkpoint", str(run), "--json", "--set", "data.test_size=40"]
    assert main(knn) == 0
    good = json.loads((run / "eval" / "knn.json").read_text())
    text = (run / "eval" / "knn.json").read_text()
    (run / "eval" / "knn.json").write_text(text[: len(text) // 2])  # torn by a crash mid-write
    before = {k: v for k, v in tree_hash(run).items() if not k.startswith("eval")}
    capsys.readouterr()
    with caplog.at_level(logging.WARNING):
        assert main(knn) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "knn.json" in r.getMessage()]
    assert len(warned) == 1 and "not done" in warned[0] and "recomputing" in warned[0]
    again = json.loads((run / "eval" / "knn.json").read_text())
    assert again["metrics"]["top1"] == good["metrics"]["top1"] and again["fingerprint"] == good["fingerprint"]
    assert {k: v for k, v in tree_hash(run).items() if not k.startswith("eval")} == before


# ---- unreadable images: deterministic replacement, counted, a clear stop past the threshold ------------


def _image_folder(root: Path, per_class: int = 8) -> list[Path]:
    rng = np.random.default_rng(0)
    files = []
    for c in ("a", "b"):
        (root / "train" / c).mkdir(parents=True)
        for i in range(per_class):
            p = root / "train" / c / f"{i}.jpg"
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(p)
            files.append(p)
    return files


def _damage_images(files: list[Path]) -> list[str]:
    """An empty file, a truncated JPEG and a text file named .jpg: the three kinds real data sets hold."""
    _zero(files[3])
    _truncate(files[10])
    files[13].write_text("not an image\n")
    return [str(files[i]) for i in (3, 10, 13)]


IMG_SETS = ["data.dataset=imagefolder", "model.img_size=16", "model.patch_size=4", "model.proj_hidden=64",
            "model.proj_out=16", "optim.batch_size=8", "optim.max_steps=4", "train.count_flops=false",
            "train.log_every=1"]


def test_decode_rgb_names_the_unreadable_file(tmp_path: Path) -> None:
    files = _image_folder(tmp_path, per_class=8)
    bad = _damage_images(files)
    assert decode_rgb(files[0]).shape == (3, 20, 20)
    for p in bad + [str(tmp_path / "gone.jpg")]:
        with pytest.raises(BadImageError) as e:
            decode_rgb(p)
        assert e.value.path == p and p in str(e.value) and "\n" not in str(e.value)


def test_replacement_is_a_pure_function_of_the_key() -> None:
    n = 10
    for index in range(n):
        for attempt in range(3):
            j = replacement_index(n, 7, 2, index, attempt)
            # naive reference: uniform over the other n - 1 samples from the keyed generator
            r = int(torch.randint(n - 1, (1,), generator=torch_generator(7, STREAM_REPLACE, 2, index, attempt)))
            assert j == (r if r < index else r + 1) and j != index and 0 <= j < n
    picks = {replacement_index(n, 0, e, 4, 0) for e in range(200)}
    assert picks == set(range(n)) - {4}  # every other sample can stand in
    with pytest.raises(ConfigError):
        replacement_index(1, 0, 0, 0, 0)


def test_read_or_replace_skips_to_a_readable_sample() -> None:
    unreadable = {3, 5}

    def read(i: int) -> int:
        if i in unreadable:
            raise BadImageError(f"unreadable image f{i}", path=f"f{i}")
        return i

    got, bad = read_or_replace(read, 6, 0, 0, 3)
    assert got not in unreadable and bad[0] == "f3" and all(b in ("f3", "f5") for b in bad)
    assert read_or_replace(read, 6, 0, 0, 3) == (got, bad)  # the same every time
    assert read_or_replace(read, 6, 0, 0, 2) == (2, [])

    def never(i: int) -> int:
        raise BadImageError(f"unreadable image f{i}", path=f"f{i}")

    with pytest.raises(BadImageError, match="replacements are unreadable"):
        read_or_replace(never, 6, 0, 0, 1)


def test_bad_image_limit_and_counter() -> None:
    assert bad_image_limit(0.001, 1_281_167) == 1281 and bad_image_limit(3, 10) == 3
    assert bad_image_limit(0.0, 10) == 0 and bad_image_limit(0.5, 9) == 4
    seen = BadImages(2)
    seen.add(["a", "b", "a"])
    seen.add(["b"])  # met again (the next epoch): still two distinct files
    assert seen.summary() == {"count": 2, "limit": 2, "paths": ["a", "b"]}
    with pytest.raises(BadImageError, match=r"3 unreadable images.*data.max_bad_images.*\(2\).*first: a"):
        seen.add(["c"])


def test_worker_reraise_keeps_one_line() -> None:
    """A DataLoader worker re-raises with the worker's traceback in the message; the error keeps its own line."""
    ds = [0]

    class Bad(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(ds)

        def __getitem__(self, i: int):
            raise BadImageError("unreadable image /data/x.jpg: Expected a non empty file", path="/data/x.jpg")

    with pytest.raises(BadImageError) as e:
        next(iter(torch.utils.data.DataLoader(Bad(), num_workers=1)))
    assert str(e.value) == "unreadable image /data/x.jpg: Expected a non empty file"


@pytest.mark.parametrize("gpu_augment", [False, True], ids=["cpu-loader", "device-jpeg-path"])
def test_unreadable_images_are_replaced_and_listed(gpu_augment: bool, tmp_path: Path, capsys) -> None:
    files = _image_folder(tmp_path / "data")
    bad = _damage_images(files)
    extra = [f"data.root={tmp_path / 'data'}", "data.max_bad_images=3", f"data.gpu_augment={str(gpu_augment).lower()}"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["pretrain", "simclr", "--preset", "smoke", "--out", str(a), *sets(*IMG_SETS, *extra)]) == 0
    summary = json.loads((a / "summary.json").read_text())
    assert summary["bad_images"]["count"] == 3 and sorted(summary["bad_images"]["paths"]) == sorted(bad)
    assert summary["bad_images"]["limit"] == 3
    # reproducible: the same replacements with a loader worker process
    assert main(["pretrain", "simclr", "--preset", "smoke", "--out", str(b),
                 *sets(*IMG_SETS, *extra, "data.num_workers=1")]) == 0
    wa = torch.load(a / "encoder.pt", weights_only=True)["state_dict"]
    wb = torch.load(b / "encoder.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_too_many_unreadable_images_stop_with_one_line(tmp_path: Path, capsys) -> None:
    files = _image_folder(tmp_path / "data")
    bad = _damage_images(files)
    out = tmp_path / "run"
    capsys.readouterr()
    rc = main(["pretrain", "simclr", "--preset", "smoke", "--out", str(out),
               *sets(*IMG_SETS, f"data.root={tmp_path / 'data'}", "data.max_bad_images=2")])
    o, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == EXIT_USAGE and "Traceback" not in o + err and len(lines) == 1
    assert "data.max_bad_images" in lines[0] and "(2)" in lines[0] and any(p in lines[0] for p in bad)
    st = json.loads((out / "status.json").read_text())
    assert st["state"] == "failed" and "data.max_bad_images" in st["reason"]


def test_evaluation_stops_naming_an_unreadable_image(trained: Path, tmp_path: Path, capsys) -> None:
    """Evaluation sets are not patched: the first unreadable file stops the suite before a result is written."""
    files = _image_folder(tmp_path / "data")
    shutil.copytree(tmp_path / "data" / "train", tmp_path / "data" / "val")
    _zero(tmp_path / "data" / "val" / "a" / "2.jpg")
    capsys.readouterr()
    rc = main(["evaluate", "knn", "--checkpoint", str(trained), "--out", str(tmp_path / "o"),
               "--set", "data.dataset=imagefolder", "--set", f"data.root={tmp_path / 'data'}"])
    o, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == EXIT_USAGE and "Traceback" not in o + err and len(lines) == 1, err
    assert str(tmp_path / "data" / "val" / "a" / "2.jpg") in lines[0]
    assert not (tmp_path / "o" / "eval" / "knn.json").exists()
    assert files  # the training split is intact


# ---- a diverged run exits 3; the message says whether a checkpoint was kept ----------------------------


def _poison_at(monkeypatch, step: int) -> None:
    from canbench.methods.simclr import SimCLR

    orig = SimCLR.forward
    calls = {"n": 0}

    def poisoned(self, batch):
        out = orig(self, batch)
        calls["n"] += 1
        if calls["n"] == step:
            out["loss"] = out["loss"] * float("nan")
            out["infonce"] = out["infonce"] * float("nan")
        return out

    monkeypatch.setattr(SimCLR, "forward", poisoned)


@pytest.mark.parametrize("ckpt_every,kept", [(1, True), (100, False)], ids=["after-a-checkpoint", "before-any"])
def test_non_finite_loss_exits_3(ckpt_every: int, kept: bool, tmp_path: Path, capsys, monkeypatch) -> None:
    _poison_at(monkeypatch, 2)
    out = tmp_path / "run"
    capsys.readouterr()
    rc = main(["pretrain", "simclr", "--preset", "smoke", "--out", str(out),
               *sets(*TINY, "optim.max_steps=4", f"train.ckpt_every={ckpt_every}")])
    o, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == EXIT_NONFINITE == 3 and "Traceback" not in o + err and len(lines) == 1, err
    assert "at step 2" in lines[0] and ("'infonce'" in lines[0] or "'loss'" in lines[0])
    assert ("last good checkpoint is kept" in lines[0]) is kept
    assert ("no checkpoint was written yet" in lines[0]) is (not kept)
    assert (out / "checkpoints" / "last.pt").is_file() is kept
    assert json.loads((out / "status.json").read_text())["state"] == "failed"
    if kept:
        assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] == 1
