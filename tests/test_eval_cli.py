"""``canbench evaluate``: every suite end to end on a tiny pretrained run, result schema, fingerprints,
skip-when-done and --force, a public MAE-format checkpoint, and errors (exit code 2) before any work."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import timm
import torch

from canbench.cli import main
from canbench.data.builtin import BUILTIN_VERSION
from canbench.train.recipe import build_config

TINY_PRETRAIN = ["model.img_size=16", "model.patch_size=4", "model.decoder_dim=32", "model.decoder_depth=1",
                 "model.decoder_heads=2", "model.proj_hidden=64", "data.builtin_size=64", "optim.batch_size=8",
                 "optim.max_steps=2"]
# small evaluation data and protocols so each suite takes seconds on 2 cores
TINY_EVAL = ["data.test_size=40", "linear.batch_size=16", "linear.epochs=3", "finetune.batch_size=16",
             "finetune.epochs=1", "fewshot.train_size=60", "fewshot.shots=[1,2]", "fewshot.seeds=[0,1]",
             "fewshot.test_size=30", "shift.test_size=20"]


def sets(*items: str) -> list[str]:
    return sum([["--set", s] for s in items], [])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from canbench.train.trainer import pretrain

    out = tmp_path_factory.mktemp("evalcli") / "can-smoke"
    pretrain(build_config("can", "smoke", TINY_PRETRAIN), out)
    return out


def evaluate(capsys, *argv: str) -> tuple[int, dict]:
    """Run ``canbench evaluate ... --json``; (exit code, records)."""
    rc = main(["evaluate", *argv, "--json", "--device", "cpu"])
    out = capsys.readouterr().out
    return rc, (json.loads(out) if rc == 0 else {})


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_record(rec: dict, suite: str, run_dir: Path) -> dict:
    """The stored JSON schema shared by every suite; returns the fingerprint."""
    stored = json.loads((run_dir / "eval" / f"{suite}.json").read_text())
    assert set(stored) == {"suite", "metrics", "fingerprint", "checkpoint", "created"}
    assert stored["suite"] == suite and stored["metrics"] == rec["metrics"]
    assert set(stored["checkpoint"]) == {"path", "sha256", "step"}
    fp = stored["fingerprint"]
    for key in ("dataset", "pooling", "img_size", "resize_crop", "sampler_padding", "metric", "eval_config",
                "eval_data", "eval_profile", "encoder", "code_version", "torch", "device_type"):
        assert key in fp, key
    assert fp["img_size"] == 16 and fp["eval_profile"] == "smoke" and fp["sampler_padding"] == "none"
    return fp


def test_knn_result_skip_when_done_and_force(run_dir, capsys):
    rc, recs = evaluate(capsys, "knn", "--checkpoint", str(run_dir), *sets(*TINY_EVAL))
    assert rc == 0 and recs["knn"]["skipped"] is False
    rec = recs["knn"]
    assert 0 <= rec["metrics"]["top1"] <= rec["metrics"]["top5"] <= 100
    fp = check_record(rec, "knn", run_dir)
    assert fp["dataset"] == "builtin" and fp["k"] == 20 and fp["pooling"] == "avg"
    assert fp["eval_data"]["test"] == {"name": "builtin", "split": "test", "size": 40, "seed": 0,
                                      "version": BUILTIN_VERSION}
    assert fp["eval_data"]["train"]["size"] == 64  # the pretraining data.builtin_size
    assert rec["checkpoint"]["sha256"] == sha256(run_dir / "checkpoints" / "last.pt")
    assert rec["checkpoint"]["step"] == 2
    created = rec["created"]
    # a second call finds the result up to date (a speed-only setting does not count)
    rc, recs = evaluate(capsys, "knn", "--checkpoint", str(run_dir), *sets(*TINY_EVAL, "knn.batch_size=7"))
    assert rc == 0 and recs["knn"]["skipped"] is True and recs["knn"]["created"] == created
    # a protocol setting does
    rc, recs = evaluate(capsys, "knn", "--checkpoint", str(run_dir), *sets(*TINY_EVAL, "knn.k=5"))
    assert rc == 0 and recs["knn"]["skipped"] is False and recs["knn"]["fingerprint"]["k"] == 5
    rc, recs = evaluate(capsys, "knn", "--checkpoint", str(run_dir), *sets(*TINY_EVAL, "knn.k=5"), "--force")
    assert rc == 0 and recs["knn"]["skipped"] is False
    # the plain table names the suite, data set and metric
    assert main(["evaluate", "knn", "--checkpoint", str(run_dir), *sets(*TINY_EVAL, "knn.k=5")]) == 0
    table = capsys.readouterr().out
    assert "knn (cached)" in table and "builtin" in table and "top1" in table and "--force" in table


def test_linear_out_names_the_eval_folder(run_dir, capsys):
    rc, recs = evaluate(capsys, "linear", "--checkpoint", str(run_dir), "--out", str(run_dir / "eval"),
                        *sets(*TINY_EVAL))
    assert rc == 0
    assert recs["linear"]["path"] == str(run_dir / "eval" / "linear.json")
    m = recs["linear"]["metrics"]
    assert {"top1", "top5", "top1_best", "history"} <= set(m) and len(m["history"]) == 3
    fp = check_record(recs["linear"], "linear", run_dir)
    assert fp["dataset"] == "builtin" and fp["mode"] == "cached_features" and fp["head_bn"] is True
    assert fp["metric"].startswith("last_epoch") and fp["epochs"] == 3 and fp["effective_batch"] == 16
    assert fp["eval_config"]["protocol"] == "smoke" and fp["resize_crop"] == "resize16_bicubic_center16"


def test_fewshot_on_heldout_and_digits(run_dir, capsys):
    rc, recs = evaluate(capsys, "fewshot", "--checkpoint", str(run_dir), *sets(*TINY_EVAL),
                        *sets("fewshot.datasets=[builtin_heldout,digits]", "fewshot.shots=[1,5]"))
    assert rc == 0
    res = recs["fewshot"]["metrics"]["results"]
    assert [(r["dataset"], r["shots"]) for r in res] == [("builtin_heldout", 1), ("builtin_heldout", 5),
                                                         ("digits", 1), ("digits", 5)]
    for r in res:
        assert 0 <= r["mean"] <= 100 and r["std"] >= 0 and r["seeds"] == [0, 1] and len(r["per_seed"]) == 2
    fp = check_record(recs["fewshot"], "fewshot", run_dir)
    assert fp["dataset"] == ["builtin_heldout", "digits"] and fp["head"] == "lsr" and fp["shots"] == [1, 5]
    assert fp["eval_data"]["digits"]["test"] == {"name": "digits", "split": "test"}


def test_shift_runs_the_finetune_first_then_reuses_it(run_dir, capsys):
    rc, recs = evaluate(capsys, "shift", "--checkpoint", str(run_dir), *sets(*TINY_EVAL))
    assert rc == 0 and list(recs) == ["finetune", "shift"]
    ft = run_dir / "finetune" / "finetuned.pt"
    assert ft.is_file() and (run_dir / "finetune" / "source.json").is_file()
    fp = check_record(recs["finetune"], "finetune", run_dir)
    assert fp["dataset"] == "builtin" and fp["pooling"] == "avg+fc_norm" and fp["layer_decay"] == 0.65
    assert recs["finetune"]["metrics"]["checkpoint"] == str(ft)
    sets_ = ["builtin", "builtin_noise_blur", "builtin_rendition", "builtin_new_background", "builtin_occlusion"]
    res = recs["shift"]["metrics"]["results"]
    assert [r["set"] for r in res] == sets_ and all(0 <= r["top1"] <= 100 for r in res)
    fp = check_record(recs["shift"], "shift", run_dir)
    assert fp["dataset"] == sets_ and fp["eval_data"]["options"] == {"builtin_size": 20}
    assert recs["shift"]["checkpoint"]["sha256"] == sha256(ft)  # the shift result names the finetuned model
    # the finetune folder as --checkpoint: results land in its run folder, already up to date
    rc, recs = evaluate(capsys, "shift", "--checkpoint", str(run_dir / "finetune"), *sets(*TINY_EVAL))
    assert rc == 0 and list(recs) == ["shift"] and recs["shift"]["skipped"] is True
    # everything done: `all` on the same settings only reads results back
    rc, recs = evaluate(capsys, "finetune", "--checkpoint", str(run_dir), *sets(*TINY_EVAL))
    assert rc == 0 and recs["finetune"]["skipped"] is True


def write_fake_mae_checkpoint(path: Path) -> dict:
    """A facebookresearch/mae pretraining checkpoint of a vit_micro-shaped ViT at 16 px (cls token, decoder)."""
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, depth=4, num_classes=0,
                            global_pool="avg", class_token=True, fc_norm=False)
    sd = {k: v.clone() for k, v in vit.state_dict().items()}
    sd.update({"mask_token": torch.zeros(1, 1, 32), "decoder_embed.weight": torch.randn(32, 192),
               "decoder_pos_embed": torch.zeros(1, 17, 32), "decoder_pred.weight": torch.randn(48, 32)})
    torch.save({"model": sd, "epoch": 799}, path)
    return sd


def test_public_mae_checkpoint(tmp_path, capsys):
    ckpt = tmp_path / "mae_pretrain_vit_micro.pth"
    write_fake_mae_checkpoint(ckpt)
    out = tmp_path / "mae-public"
    data = ["data.dataset=builtin", "data.train_size=64", "data.test_size=40", "linear.batch_size=16",
            "linear.epochs=2"]
    # the public default is IN-1K at paper scale: no data.root -> exit 2, nothing written
    assert main(["evaluate", "linear", "--checkpoint", str(ckpt), "--format", "mae", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "imagenet" in err and "data.root" in err and not out.exists()
    # --out is required for a public checkpoint
    assert main(["evaluate", "linear", "--checkpoint", str(ckpt), "--format", "mae", *sets(*data)]) == 2
    assert "--out" in capsys.readouterr().err
    rc, recs = evaluate(capsys, "linear", "--checkpoint", str(ckpt), "--format", "mae", "--out", str(out),
                        "--preset", "smoke", *sets(*data))
    assert rc == 0
    rec = json.loads((out / "eval" / "linear.json").read_text())
    fp = rec["fingerprint"]
    assert fp["encoder"] == {"source": "mae", "arch": "vit_micro", "img_size": 16, "patch_size": 4,
                             "class_token": True, "pool": "cls"}  # MAE's linear probe reads the cls token
    assert fp["dataset"] == "builtin" and fp["mode"] == "cached_features"
    assert rec["checkpoint"] == {"path": str(ckpt.resolve()), "sha256": sha256(ckpt), "step": None}
    # a wrong --arch is named
    assert main(["evaluate", "linear", "--checkpoint", str(ckpt), "--format", "mae", "--arch", "vit_base",
                 "--out", str(out), *sets(*data)]) == 2
    assert "vit_base" in capsys.readouterr().err


def test_errors_exit_2_before_any_work(run_dir, tmp_path, capsys):
    before = sorted(p.name for p in (run_dir / "eval").glob("*.json")) if (run_dir / "eval").exists() else []
    missing = tmp_path / "nowhere" / "objectnet-1.0"
    # a shift set whose root is missing: named with its path, and the finetune never starts
    rc = main(["evaluate", "shift", "--checkpoint", str(run_dir), "--force",
               *sets("shift.sets=[builtin,objectnet]", f"shift.roots.objectnet={missing}")])
    err = capsys.readouterr().err
    assert rc == 2 and "objectnet" in err and str(missing) in err
    # a shift set without any root
    rc = main(["evaluate", "shift", "--checkpoint", str(run_dir), *sets("shift.sets=[imagenet_v2]")])
    err = capsys.readouterr().err
    assert rc == 2 and "imagenet_v2" in err and "shift.roots.imagenet_v2" in err
    # a few-shot set that needs a root
    rc = main(["evaluate", "fewshot", "--checkpoint", str(run_dir), *sets("fewshot.datasets=[dtd]")])
    assert rc == 2 and "fewshot.roots.dtd" in capsys.readouterr().err
    # unknown keys name the key
    assert main(["evaluate", "linear", "--checkpoint", str(run_dir), *sets("linear.epochz=3")]) == 2
    assert "linear.epochz" in capsys.readouterr().err
    assert main(["evaluate", "knn", "--checkpoint", str(run_dir), *sets("knnn.k=3")]) == 2
    assert "knnn" in capsys.readouterr().err
    assert main(["evaluate", "knn", "--checkpoint", str(run_dir), *sets("model.pool=cls")]) == 2
    assert "--format" in capsys.readouterr().err
    # not a checkpoint
    assert main(["evaluate", "knn", "--checkpoint", str(tmp_path)]) == 2
    assert "run folder" in capsys.readouterr().err
    after = sorted(p.name for p in (run_dir / "eval").glob("*.json")) if (run_dir / "eval").exists() else []
    assert after == before
