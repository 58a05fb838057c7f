"""Files a user did not write never run code: CIFAR pickles, grid names that become paths, #SBATCH values.

Every payload here is harmless: run, it would only create a marker file in ``tmp_path``. Each test shows the
payload is live (a plain ``pickle.load`` or submitit's own renderer does what the attacker wants) and that
canbench refuses it with a one-line error naming the file or key, before the payload can act.
"""

from __future__ import annotations

import builtins
import os
import pickle
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from canbench.cli import main
from canbench.config import ConfigError
from canbench.data.datasets import build_dataset
from canbench.io import safe_pickle_load
from canbench.rundir import check_path_part
from canbench.slurm.runstore import default_root, run_dir

# ----------------------------------------------------------------------------------------------------
# CIFAR batches: the real on-disk format loads; a crafted batch is refused


class _Py2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote for the CIFAR batches (protocol 2): ``str`` and ``bytes`` as
    ``BINSTRING`` (Python 2 had one byte-string type) and NumPy under its NumPy-1 module ``numpy.core``."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)

    dispatch[str] = _save_py2_str
    dispatch[bytes] = _save_py2_str

    def save_global(self, obj, name=None):
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)


def _dump_py2(obj, path: Path) -> None:
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


def _write_cifar10_py2(root: Path, per_batch: int = 3) -> dict[str, list[int]]:
    """A cifar-10-batches-py folder in the format of the distributed files (dict keys, labels, raw rows)."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    labels = {}
    for b, fname in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        lab = [(3 * b + k) % 10 for k in range(per_batch)]
        data = np.zeros((per_batch, 3072), dtype=np.uint8)
        for k, y in enumerate(lab):
            data[k, :1024], data[k, 1024:2048], data[k, 2048] = 20 * y + 1, 250 - 20 * y, b  # R, G, B marker
        _dump_py2({"batch_label": f"training batch {b + 1} of 5", "labels": lab, "data": data,
                   "filenames": [f"img_{b}_{k}.png" for k in range(per_batch)]}, base / fname)
        labels[fname] = lab
    _dump_py2({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                               "truck"], "num_cases_per_batch": per_batch, "num_vis": 3072}, base / "batches.meta")
    return labels


def test_cifar10_in_the_python2_format_of_the_real_files_loads(tmp_path: Path) -> None:
    labels = _write_cifar10_py2(tmp_path)
    raw = (tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes()
    assert raw.startswith(b"\x80\x02") and b"cnumpy.core.multiarray\n_reconstruct\n" in raw  # as Python 2 wrote it
    assert pickle.BINSTRING + struct.pack("<i", 3 * 3072) in raw  # the pixel rows: one Python 2 str
    train = build_dataset("cifar10", root=tmp_path, split="train")
    test = build_dataset("cifar10", root=tmp_path, split="test")
    assert train.classes[3] == "cat" and isinstance(train.classes[3], str)
    assert train.targets == sum((labels[f"data_batch_{i}"] for i in range(1, 6)), [])
    assert test.targets == labels["test_batch"]
    for ds, batches in ((train, range(5)), (test, [5])):
        expect = [(b, y) for b in batches for y in labels[(["test_batch"] if b == 5 else
                                                         [f"data_batch_{b + 1}"])[0]]]
        for i, (b, y) in enumerate(expect):
            img, label = ds[i]
            assert label == y and img.shape == (3, 32, 32)
            assert int(img[0, 7, 7]) == 20 * y + 1 and int(img[1, 31, 31]) == 250 - 20 * y
            assert int(img[2, 0, 0]) == b and int(img[2, 0, 1]) == 0


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_safe_pickle_load_round_trips_plain_data_and_arrays(tmp_path: Path, protocol: int) -> None:
    obj = {"data": np.arange(24, dtype=np.uint8).reshape(2, 12), "f": np.linspace(0, 1, 5), "n": np.int64(7),
           "labels": [1, 2], "t": (1.5, None, True), "b": b"\x00\xff", "s": {"x"}, "u": "héllo",
           "fs": frozenset({2}), "ba": bytearray(b"ab")}
    p = tmp_path / "x.pkl"
    p.write_bytes(pickle.dumps(obj, protocol=protocol))  # protocol 2 from Python 3 rebuilds bytes via _codecs
    got = safe_pickle_load(p)
    assert got.keys() == obj.keys()
    for k in ("data", "f"):
        assert got[k].dtype == obj[k].dtype and np.array_equal(got[k], obj[k])
    assert got["n"] == 7 and isinstance(got["n"], np.int64)
    plain = ("labels", "t", "b", "s", "u", "fs", "ba")
    assert [got[k] for k in plain] == [obj[k] for k in plain]
    assert [type(got[k]) for k in plain] == [type(obj[k]) for k in plain]


class _Payload:
    """Unpickled by a plain ``pickle.load``, ``call(*args)`` runs: each creates ``marker``."""

    def __init__(self, kind: str, marker: Path) -> None:
        self.kind, self.marker = kind, str(marker)

    def __reduce__(self):
        touch = f"open({self.marker!r}, 'w').close()"
        return {"os.system": (os.system, (f"touch '{self.marker}'",)),
                "builtins.exec": (builtins.exec, (touch,)),
                "builtins.eval": (builtins.eval, (touch,)),
                "subprocess.call": (subprocess.call, (["touch", self.marker],))}[self.kind]


PAYLOADS = ["os.system", "builtins.exec", "builtins.eval", "subprocess.call"]


@pytest.mark.parametrize("kind", PAYLOADS)
def test_crafted_cifar_batch_is_refused_before_it_runs(tmp_path: Path, kind: str) -> None:
    labels = _write_cifar10_py2(tmp_path / "data")
    batch = tmp_path / "data" / "cifar-10-batches-py" / "data_batch_1"
    live = tmp_path / "live"  # the same payload under a plain pickle.load: it runs
    pickle.loads(pickle.dumps({"labels": labels["data_batch_1"], "data": _Payload(kind, live)}, protocol=2))
    assert live.exists()

    marker = tmp_path / "pwned"
    batch.write_bytes(pickle.dumps({"batch_label": "training batch 1 of 5", "labels": labels["data_batch_1"],
                                    "data": _Payload(kind, marker)}, protocol=2))
    with pytest.raises(ConfigError) as e:
        build_dataset("cifar10", root=tmp_path / "data", split="train")
    msg = str(e.value)
    assert str(batch) in msg and "refused global" in msg and "could run code" in msg and "\n" not in msg
    assert not marker.exists()
    build_dataset("cifar10", root=tmp_path / "data", split="test")  # the untouched split still loads


def test_crafted_cifar_meta_is_refused_through_the_cli(tmp_path: Path, capsys) -> None:
    _write_cifar10_py2(tmp_path / "data")
    meta = tmp_path / "data" / "cifar-10-batches-py" / "batches.meta"
    marker = tmp_path / "pwned"
    meta.write_bytes(pickle.dumps({"label_names": _Payload("os.system", marker)}))
    rc = main(["pretrain", "can", "--preset", "smoke", "--out", str(tmp_path / "run"),
               "--set", "data.dataset=cifar10", "--set", f"data.root={tmp_path / 'data'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and not marker.exists()
    assert len(err) == 1 and err[0].startswith("canbench: error:") and str(meta) in err[0] and "posix.system" in err[0]


def test_safe_pickle_load_refuses_other_codecs_and_names_broken_files(tmp_path: Path) -> None:
    import _codecs

    class Rot:
        def __reduce__(self):
            return _codecs.encode, ("abc", "rot13")

    p = tmp_path / "rot.pkl"
    p.write_bytes(pickle.dumps(Rot(), protocol=2))
    assert pickle.loads(p.read_bytes()) == "nop"  # live under a plain load
    with pytest.raises(ConfigError, match=r"rot\.pkl.*refused _codecs\.encode with encoding 'rot13'"):
        safe_pickle_load(p)
    good = pickle.dumps({"data": np.zeros(10, np.uint8)}, protocol=2)
    for name, blob in (("torn.pkl", good[: len(good) // 2]), ("empty.pkl", b""), ("text.pkl", b"hello world\n")):
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(ConfigError, match=rf"{name} is not a readable pickle"):
            safe_pickle_load(tmp_path / name)


def test_cifar_batch_of_the_wrong_shape_is_a_config_error(tmp_path: Path) -> None:
    _write_cifar10_py2(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    _dump_py2({"labels": [1, 2], "data": np.zeros((2, 100), np.uint8)}, batch)
    with pytest.raises(ConfigError, match=r"data_batch_2: 'data' must hold rows of 3072 uint8 pixels"):
        build_dataset("cifar10", root=tmp_path, split="train")
    _dump_py2({"labels": [1, 2]}, batch)
    with pytest.raises(ConfigError, match=r"data_batch_2: not a CIFAR batch: missing key\(s\) \['data'\]"):
        build_dataset("cifar10", root=tmp_path, split="train")


# ----------------------------------------------------------------------------------------------------
# Names that become path parts: one rule


BAD_NAMES = ["..", ".", "", "/tmp/abs", "a/b", "../../etc", "a\\b", "a\nb", "a\x00b", "a\tb", "x" * 256]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_path_part_rule(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"^grid name=.* cannot be a folder name: "):
        check_path_part(bad, "grid name")
    with pytest.raises(ConfigError, match="scale="):
        default_root("ok", bad)
    with pytest.raises(ConfigError, match="run folder name="):
        run_dir("runs/x/smoke", bad)
    assert check_path_part("table3_in1k.v2-b", "grid name") == "table3_in1k.v2-b"


def _spec(tmp_path: Path, **changes) -> Path:
    spec = {"name": "safe", "benchmark": "smoke", "methods": ["can"], "seeds": [0],
            "scales": {"smoke": {"preset": "smoke", "overrides": {"optim.max_steps": 2}}}}
    spec.update(changes)
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("command", [["plan"], ["submit", "--executor", "debug"]])
@pytest.mark.parametrize("bad", ["..", ".", "", "/tmp/abs-grid", "a/../../b", "a\nb"])
def test_bad_grid_name_is_refused_by_the_cli_and_writes_nothing(tmp_path: Path, monkeypatch, capsys, command,
                                                                 bad) -> None:
    work = tmp_path / "work"
    work.mkdir()
    spec = _spec(tmp_path, name=bad)
    monkeypatch.chdir(work)  # the default run store: runs/<grid name>/<scale> under the working directory
    before = _tree(tmp_path)
    rc = main(["grid", command[0], str(spec), *command[1:]])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("canbench: error:")
    assert f"name={bad!r} cannot be a folder name" in err[0] and str(spec) in err[0]
    assert _tree(tmp_path) == before and not Path("/tmp/abs-grid").exists()


@pytest.mark.parametrize("bad", ["..", "a/b", "/abs", ""])
def test_bad_variant_label_is_refused(tmp_path: Path, capsys, bad: str) -> None:
    spec = _spec(tmp_path, axes={"zip": {"variant": ["ok", bad], "method.l_nce": [0.0, 0.03]}})
    rc = main(["grid", "plan", str(spec), "--root", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and f"axes: variant={bad!r} cannot be a folder name" in err[0]
    assert not (tmp_path / "runs").exists()


def test_good_names_still_plan(tmp_path: Path, capsys) -> None:
    spec = _spec(tmp_path, name="my.grid-1", axes={"zip": {"variant": ["AN", "CN"], "method.l_nce": [0.0, 0.03]}})
    assert main(["grid", "plan", str(spec), "--root", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "my.grid-1 (smoke): 2 runs" in out and "can-AN-s0-" in out and "can-CN-s0-" in out


# ----------------------------------------------------------------------------------------------------
# #SBATCH values


def test_submitit_renders_a_newline_payload_as_a_shell_line() -> None:
    """Why the values are checked: submitit quotes them, yet a newline still starts a line of the script."""
    from submitit.slurm.slurm import _make_sbatch_string

    script = _make_sbatch_string(command="python x.py", folder="/tmp/f", partition="gpu\ntouch /tmp/pwned #",
                                 additional_parameters={"comment": "x\nid #"})
    lines = script.splitlines()
    assert "touch /tmp/pwned #'" in lines and "id #'" in lines


PAYLOAD = "gpu\ntouch {marker} #"


@pytest.mark.parametrize("key,resources", [
    ("partition", {"partition": PAYLOAD}),
    ("account", {"account": PAYLOAD}),
    ("qos", {"qos": "normal;touch {marker}"}),
    ("constraint", {"constraint": "a100 && touch {marker}"}),
    ("additional.comment", {"additional": {"comment": PAYLOAD}}),
    ("additional.mail-user", {"additional": {"mail-user": "me@x`touch {marker}`"}}),
    ("additional", {"additional": {"exclusive\ntouch {marker} #": True}}),
    ("additional.begin", {"additional": {"begin": ["now"]}}),
    ("mem_gb", {"mem_gb": float("inf")}),
])
def test_bad_resource_values_fail_at_load_before_any_script_is_rendered(tmp_path: Path, monkeypatch, capsys, key,
                                                                        resources) -> None:
    import submitit.slurm.slurm as sslurm

    marker = tmp_path / "pwned"
    res = yaml.safe_load(yaml.safe_dump(resources).replace("{marker}", str(marker)))
    spec = _spec(tmp_path, scales={"smoke": {"preset": "smoke", "resources": res}})
    rendered = []
    monkeypatch.setattr(sslurm, "_make_sbatch_string", lambda *a, **k: rendered.append(k) or "")
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")  # as if sbatch were installed
    for cmd in (["plan"], ["submit", "--executor", "slurm"]):
        rc = main(["grid", *cmd, str(spec), "--root", str(tmp_path / "runs")])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and err[0].startswith("canbench: error:")
        assert f"scales.smoke.resources: {key}" in err[0]
    assert rendered == [] and not (tmp_path / "runs").exists() and not marker.exists()


def test_bad_resource_override_on_the_command_line_is_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    import submitit.slurm.slurm as sslurm

    rendered = []
    monkeypatch.setattr(sslurm, "_make_sbatch_string", lambda *a, **k: rendered.append(k) or "")
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")
    rc = main(["grid", "submit", str(_spec(tmp_path)), "--executor", "slurm", "--root", str(tmp_path / "runs"),
               "--set", "slurm.partition=gpu;reboot"])
    err = capsys.readouterr().err
    assert rc == 2 and "--set slurm.*: partition='gpu;reboot' cannot go into an #SBATCH line" in err
    assert rendered == [] and not (tmp_path / "runs").exists()


def test_good_resource_values_pass() -> None:
    from canbench.slurm.spec import Resources

    Resources(partition="gpu,gpu-long", account="proj_123", qos="high", constraint="a100&ib|[rack1*2]",
              mem_gb=31.5, additional={"comment": "paper table 3", "exclusive": True, "gres": "gpu:a100:2",
                                       "exclude": "node[01-03]", "mail_user": "me@lab.org", "nice": 10}).validate()


# ----------------------------------------------------------------------------------------------------
# A finetuned checkpoint names what timm builds: only what canbench writes


@pytest.mark.parametrize("change", [{"model_kwargs": {"checkpoint_path": "{other}"}},
                                    {"model_kwargs": {"pretrained_cfg_overlay": {"file": "{other}"}}},
                                    {"model_name": "local-dir:{tmp}"}, {"model_name": "hf-hub:someone/vit"}])
def test_finetuned_checkpoint_cannot_point_timm_elsewhere(tmp_path: Path, change) -> None:
    import torch

    from canbench.evaluation.classifier import classifier_from_encoder, load_finetuned, save_finetuned
    from canbench.io import torch_load, torch_save_atomic
    from canbench.methods.backbone import ViTEncoder

    torch.manual_seed(0)
    enc = ViTEncoder(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2)
    clf, spec = classifier_from_encoder(enc, 3)
    good = save_finetuned(tmp_path / "good.pt", clf, spec)
    load_finetuned(good)  # what canbench writes loads
    other = tmp_path / "other.pt"
    torch_save_atomic(clf.state_dict(), other)  # a loadable file timm would happily read
    ckpt = torch_load(good)
    change = yaml.safe_load(yaml.safe_dump(change).replace("{other}", str(other)).replace("{tmp}", str(tmp_path)))
    if "model_kwargs" in change:
        change["model_kwargs"] = {**ckpt["model_kwargs"], **change["model_kwargs"]}
    ckpt.update(change)
    bad = tmp_path / "bad.pt"
    torch_save_atomic(ckpt, bad)
    with pytest.raises(ConfigError, match=r"bad\.pt: model_name=.* are not what canbench writes"):
        load_finetuned(bad)


# ----------------------------------------------------------------------------------------------------
# A received run store: grid status reads a failed job's log only inside the store


def test_failed_job_log_outside_the_store_is_not_copied_into_it(tmp_path: Path, monkeypatch) -> None:
    from canbench.rundir import RunDir
    from canbench.slurm import control
    from canbench.slurm.executors import JobState

    class Failed:
        def states(self, status):
            return [JobState(alive=False, state="FAILED") for _ in status]

    monkeypatch.setattr(control, "get_backend", lambda name: Failed())
    secret = tmp_path / "home" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("my private key\n")
    root = tmp_path / "store"
    inside = root / ".submitit" / "x" / "1_0_log.err"
    inside.parent.mkdir(parents=True)
    inside.write_text("Traceback: the real error\n")
    for name, log in (("a-1", secret), ("b-2", inside), ("c-3", root / ".." / "home" / "secret.txt")):
        RunDir(root / name).write_status("running", executor="slurm", job_id="77", log_err=str(log))
    control.reconcile([root / "a-1", root / "b-2", root / "c-3"])
    got = {n: RunDir(root / n).read_status() for n in ("a-1", "b-2", "c-3")}
    assert all(st["state"] == "failed" for st in got.values())
    assert got["b-2"]["traceback"] == "Traceback: the real error"  # the store's own log is still shown
    assert got["a-1"]["traceback"] == got["c-3"]["traceback"] == ""
    assert "private" not in "".join(p.read_text() for p in root.rglob("status.json"))
