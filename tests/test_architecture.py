"""The package layout docs/architecture.md describes: dependency direction, no string imports, module size, a
self-contained repository, and "a new method is one module plus one registry line"."""

from __future__ import annotations

import ast
import re
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# package -> folder (setup.cfg package_dir); canbench.__main__ is an entry point like canbench.cli
PACKAGES = {"canbench": "canbench", "canbench.cli": "canbench/cli", "canbench.data": "data",
            "canbench.methods": "methods", "canbench.train": "train", "canbench.evaluation": "evaluation",
            "canbench.slurm": "slurm", "canbench.reports": "reports", "canbench.benchmarks": "benchmarks"}
# lower layers never import higher ones; packages in one layer never import each other
LAYERS = [["canbench"], ["canbench.data", "canbench.methods"], ["canbench.train"], ["canbench.evaluation"],
          ["canbench.slurm"], ["canbench.reports"], ["canbench.benchmarks"], ["canbench.cli"]]
MAX_LINES = 500


def _package(module: str) -> str:
    if module == "canbench.__main__":
        return "canbench.cli"
    best = "canbench"
    for pkg in PACKAGES:
        if (module == pkg or module.startswith(pkg + ".")) and len(pkg) > len(best):
            best = pkg
    return best


def _modules():
    for pkg, folder in PACKAGES.items():
        for f in sorted((REPO / folder).rglob("*.py")):
            if pkg == "canbench" and "cli" in f.relative_to(REPO / folder).parts:
                continue
            rel = f.relative_to(REPO / folder).with_suffix("")
            yield ".".join([pkg, *rel.parts]).removesuffix(".__init__"), f


def _imports(module: str, path: Path) -> list[tuple[str, int]]:
    """Every canbench module ``path`` imports (module level and inside functions), with the line number."""
    out = []
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.Import):
            out += [(a.name, n.lineno) for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            if n.level:
                base = module.split(".")[: len(module.split(".")) - n.level + (path.name == "__init__.py")]
                out.append((".".join(base + ([n.module] if n.module else [])), n.lineno))
            else:
                out.append((n.module or "", n.lineno))
    return [(m, ln) for m, ln in out if m.startswith("canbench")]


def test_imports_follow_the_layers_and_the_package_graph_has_no_cycle():
    layer = {pkg: i for i, names in enumerate(LAYERS) for pkg in names}
    assert set(layer) == set(PACKAGES)
    edges: dict[str, set[str]] = defaultdict(set)
    wrong = []
    for module, path in _modules():
        src = _package(module)
        for target, line in _imports(module, path):
            dst = _package(target)
            if dst == src:
                continue
            edges[src].add(dst)
            if layer[dst] >= layer[src]:
                wrong.append(f"{path.relative_to(REPO)}:{line}: {src} imports {target} ({dst} is not below it)")
    assert not wrong, "\n".join(wrong)
    # the layering implies no cycle; check it directly as well (depth-first search)
    state: dict[str, int] = {}

    def visit(n: str, trail: list[str]) -> None:
        state[n] = 1
        for m in edges[n]:
            assert state.get(m) != 1, f"import cycle: {' -> '.join(trail + [n, m])}"
            if m not in state:
                visit(m, trail + [n])
        state[n] = 2

    for n in PACKAGES:
        if n not in state:
            visit(n, [])
    assert edges["canbench.cli"] >= {"canbench.train", "canbench.evaluation", "canbench.slurm", "canbench.reports"}


def test_no_string_imports_of_canbench_modules():
    found = []
    for _, path in _modules():
        text = path.read_text()
        for m in re.finditer(r"(import_module|__import__|find_spec)\(\s*[\"']canbench", text):
            found.append(f"{path.relative_to(REPO)}: {m.group(0)}")
    assert not found, found


def test_long_modules_say_why():
    long = []
    for _, path in _modules():
        n = len(path.read_text().splitlines())
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if n > MAX_LINES and "Why one module" not in doc:
            long.append(f"{path.relative_to(REPO)}: {n} lines")
    assert not long, long


def test_repository_stands_on_its_own():
    """No file points to notes outside the repository or to tracker numbers (the pattern is built here so
    this file does not match itself)."""
    pattern = r"\.\./" + "shared" + "|" + "iss" + r"ue [0-9]"
    files = subprocess.run(["git", "ls-files", "*.py", "*.md", "*.yaml", "*.sh", "*.cfg"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    hits = [f"{f}:{i}" for f in files for i, line in enumerate((REPO / f).read_text().splitlines(), 1)
            if re.search(pattern, line)]
    assert not hits, hits


def test_architecture_doc_matches_the_tree():
    doc = (REPO / "docs" / "architecture.md").read_text()
    for pkg, folder in PACKAGES.items():
        assert f"{folder}/" in doc, f"docs/architecture.md does not mention {folder}/ ({pkg})"
    for _module, path in _modules():
        rel = str(path.relative_to(REPO))
        if path.name != "__init__.py" and "perf/" not in rel and path.stem not in ("__main__",):
            assert path.name in doc, f"docs/architecture.md does not mention {rel}"
    for layer in LAYERS:
        for pkg in layer:
            assert pkg in doc


def test_flag_layer_executors_are_the_backends():
    from canbench.flags import EXECUTORS
    from canbench.slurm.executors import BACKENDS

    assert set(EXECUTORS) == set(BACKENDS)


# ---- a new method: one module plus one registry line ----------------------------------------------------------

def test_a_new_method_is_one_module_plus_one_registry_line(tmp_path, monkeypatch, tiny_overrides):
    """The example of docs/architecture.md, run: a denoising-only method trains, is summarised and is labelled."""
    import torch

    from canbench import methods
    from canbench.methods.backbone import patchify
    from canbench.methods.base import PretrainMethod
    from canbench.methods.losses import masked_patch_mse
    from canbench.reports.tables import row_label
    from canbench.train.recipe import build_config
    from canbench.train.trainer import pretrain

    class Denoise(PretrainMethod):  # the whole method: what docs/architecture.md shows
        name, label, num_views = "denoise", "Denoise", 1
        defaults = dict(mask_ratio=0.0, l_nce=0.0, lam=0.0, sigma_max=0.1, noise_mode="full")
        loss_terms = {"denoise": "denoise_loss"}

        def __init__(self, cfg) -> None:
            super().__init__(cfg, head=False, decoder=True, sigma_embedding=True)

        def forward(self, batch):
            seeds = self.view_seeds(batch["seed"], 1)
            x, sigma, added = self.add_noise(batch["views"][0], seeds, self.cfg.method.sigma_max)
            pred = self.decoder(self.encode(x, None), None, sigma)
            ones = torch.ones(pred.shape[:2], device=pred.device)
            return self.combine({"denoise": masked_patch_mse(pred, patchify(added, self.patch_size), ones)},
                                {"denoise": 1.0})

    monkeypatch.setitem(methods.METHODS, "denoise", Denoise)  # the one registry line
    cfg = build_config("denoise", "smoke", tiny_overrides + ["optim.max_steps=3", "optim.epochs=1"])
    assert (cfg.method.sigma_max, cfg.method.mask_ratio) == (0.1, 0.0)  # its defaults, read from the class
    summary = pretrain(cfg, tmp_path / "run")
    assert summary["steps"] == 3 and set(summary["final"]) == {"loss", "denoise"}
    assert row_label({"method": "denoise"}, ["method"]) == "Denoise"  # the class's label
    from canbench.reports.cells import cell_key, lower_is_better

    assert lower_is_better("denoise_loss")  # tables score its loss term as a loss
    assert cell_key({"suite": "pretrain", "metric": "denoise", "method": "denoise"})["metric"] == "denoise_loss"


@pytest.mark.parametrize("name", ["can", "simclr", "mae"])
def test_registered_methods_declare_what_others_read(name):
    from canbench.config import MethodConfig
    from canbench.methods import METHODS

    cls = METHODS[name]
    assert cls.name == name and cls.label and cls.num_views in (1, 2)
    assert set(cls.defaults) == {"mask_ratio", "l_nce", "lam", "sigma_max", "noise_mode"}
    assert set(cls.defaults) <= set(MethodConfig.__dataclass_fields__)
    assert cls.loss_terms and all(v.endswith("_loss") for v in cls.loss_terms.values())
