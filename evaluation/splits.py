"""Which data an evaluation reads: one split of one data set as a :class:`DataSpec`, every root checked first.

The data follow the pretraining data set (its *family*): ``builtin`` -> linear / kNN / finetune on the
built-in train / test splits at the pretraining image size, few-shot on ``builtin_heldout`` and
``digits``; ``imagefolder`` / ``imagenet`` -> IN-1K train / val from ``data.root``; any other registered
set -> its own train / test splits. A missing root or file raises :class:`~canbench.config.ConfigError`
naming the set, the path and the key that sets it, before any work. ``DataSpec.describe()`` (no paths)
goes into a result's fingerprint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from canbench.config import ConfigError, expand_path, flatten, is_path_key
from canbench.data.builtin import BUILTIN_VERSION
from canbench.data.datasets import DATASETS, build_dataset, check_dataset_layout
from canbench.data.identity import identify

BUILTIN_SEED = 0  # evaluation always reads the canonical built-in data set (seed 0), whatever the pretraining seed
BUILTIN_FEWSHOT_SETS = ("builtin_heldout", "digits")
IMAGENET_NAMES = ("imagenet", "imagefolder")
IMAGEFOLDER_EXPECTED = ("<root>/train/<class>/* and <root>/val/<class>/* (or data.root=<root>/train with a "
                        "sibling val/, or data.val_root=<val folder>)")


def generated_sets() -> tuple[str, ...]:
    """Registered data sets that need no root (built-in family and variants, digits)."""
    return tuple(n for n, s in DATASETS.items() if not s.needs_root)


def family(dataset: str) -> str:
    """``imagenet`` (IN-1K layouts), ``builtin`` (generated sets) or ``generic`` (other registered sets)."""
    if dataset in IMAGENET_NAMES:
        return "imagenet"
    if dataset in generated_sets():
        return "builtin"
    return "generic"


@dataclass
class DataSpec:
    """One split of one data set, buildable later; ``describe()`` (no paths) goes into the fingerprint."""

    name: str  # registry name (build_dataset)
    split: str
    label: str | None = None  # the name results use (e.g. "imagenet" for an ImageFolder IN-1K)
    root: str | None = None
    size: int | None = None  # generated sets only (None: the set's default)

    @property
    def generated(self) -> bool:
        return self.name in generated_sets()

    @property
    def display(self) -> str:
        return self.label or self.name

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.display, "split": self.split}
        if self.generated and self.name != "digits":
            d.update(size=self.size, seed=BUILTIN_SEED, version=BUILTIN_VERSION)
        elif self.name in IMAGENET_NAMES + ("jft",) and self.root is not None:
            d["identity"] = identify(self.name, self.root, self.split)  # what the folder holds (cached listing)
        return d

    def build(self, img_size: int) -> Any:
        kw: dict[str, Any] = {}
        if self.generated and self.name != "digits":
            kw = {"size": self.size, "seed": BUILTIN_SEED}
        return build_dataset(self.name, self.root, self.split, img_size, **kw)


def num_classes(ds: Any) -> int:
    """The number of classes of a built data set (its ``num_classes`` / ``classes``, else the largest label + 1)."""
    n = getattr(ds, "num_classes", None)
    if isinstance(n, int) and n > 0:
        return n
    classes = getattr(ds, "classes", None)
    if classes:
        return len(classes)
    from canbench.evaluation.fewshot import dataset_labels

    return int(dataset_labels(ds).max()) + 1


def check_dir(what: str, path: str | Path | None, key: str) -> Path:
    """``path`` as an existing folder, or a ConfigError naming ``what`` and the ``key`` that sets it."""
    if path is None:
        raise ConfigError(f"{what}: no data root given; set {key}=/path/to/it")
    p = Path(expand_path(str(path)))
    if not p.is_dir():
        raise ConfigError(f"{what}: root {p} does not exist (or is not a folder); set {key}=/path/to/it")
    return p


def check_root_is_read(dataset: str, data: Any, origin: str = "data.dataset", prefix: str = "data.") -> None:
    """A ``data.root`` / ``data.val_root`` given for a generated evaluation set (built-in, digits) would be ignored
    and the suites would run on other data than meant: a ConfigError naming the keys (``origin``: where the data
    set came from; ``prefix``: how the caller spells the section, e.g. ``eval.data.`` in a grid)."""
    if family(dataset) != "builtin":
        return
    for key in ("root", "val_root"):
        value = getattr(data, key, None)
        if value:
            raise ConfigError(f"{prefix}{key}={value} is set, but the evaluation data set is {dataset!r} ({origin}), "
                              f"which is generated and reads no root; to evaluate on the data under that root set "
                              f"{prefix}dataset=imagefolder (IN-1K as <root>/train and <root>/val) or the registered "
                              f"set it holds, else leave {prefix}{key} unset")


def check_setting_roots(settings: dict[str, Any]) -> None:
    """Every data root an evaluation settings mapping names (``data.root``, ``data.val_root``, ``fewshot.root``,
    ``fewshot.roots.<name>``, ``shift.roots.<set>``) is an existing folder, else a ConfigError naming the key and
    the path. A grid checks its runs' evaluation roots with it before anything trains."""
    for key, value in flatten(settings or {}).items():
        if value is not None and is_path_key(key) and not key.endswith(".checkpoint"):
            check_dir(f"evaluation setting {key}", value, key)


def registry_check(name: str, root: Path, split: str, key: str) -> None:
    """The registry's required files for ``name`` / ``split`` under ``root`` (cheap path checks, no decoding)."""
    try:
        check_dataset_layout(name, root, split)
    except ConfigError as e:
        raise type(e)(f"{e}\n(root from {key}={root})") from None


def eval_split(name: str) -> str:
    """``test`` when the set has one, else ``val``."""
    spec = DATASETS.get(name)
    if spec is None or not spec.splits or "test" in spec.splits:
        return "test"
    return "val"


def imagenet_specs(dataset: str, root: str | None, val_root: str | None) -> tuple[DataSpec, DataSpec]:
    """IN-1K train / val: torchvision ``imagenet`` layout or ImageFolder (``<root>/{train,val}`` or root=.../train)."""
    base = check_dir("data set 'imagenet' (IN-1K train/val)", root, "data.root")
    if dataset == "imagenet":
        registry_check("imagenet", base, "train", "data.root")
        registry_check("imagenet", base, "val", "data.root")
        return DataSpec("imagenet", "train", "imagenet", str(base)), DataSpec("imagenet", "val", "imagenet", str(base))
    if (base / "train").is_dir():
        train = DataSpec("imagefolder", "train", "imagenet", str(base))
        parent = base
    elif base.name == "train":
        train = DataSpec("imagefolder", "train", "imagenet", str(base.parent))
        parent = base.parent
    else:
        raise ConfigError(f"data set 'imagenet' (ImageFolder): no train folder at {base / 'train'}; "
                          f"expected {IMAGEFOLDER_EXPECTED}")
    if val_root is not None:
        v = check_dir("data set 'imagenet' val split", val_root, "data.val_root")
        val = DataSpec("imagefolder", "val", "imagenet", str(v))
    elif (parent / "val").is_dir():
        val = DataSpec("imagefolder", "val", "imagenet", str(parent))
    else:
        raise ConfigError(f"data set 'imagenet' (ImageFolder): no val folder at {parent / 'val'}; "
                          f"expected {IMAGEFOLDER_EXPECTED}")
    return train, val


def main_specs(fam: str, dataset: str, data: Any, pretrain_builtin_size: int | None) -> tuple[DataSpec, DataSpec]:
    """The linear / kNN / finetune train and evaluation splits of ``data`` (an :class:`EvalData` section)."""
    if fam == "imagenet":
        return imagenet_specs(dataset, data.root, data.val_root)
    if fam == "builtin":
        train_size = data.train_size if data.train_size is not None else pretrain_builtin_size
        return DataSpec(dataset, "train", size=train_size), DataSpec(dataset, eval_split(dataset), size=data.test_size)
    root = check_dir(f"data set {dataset!r}", data.root, "data.root")
    if dataset not in DATASETS:
        raise ConfigError(f"data.dataset={dataset!r} is not a registered data set ({', '.join(sorted(DATASETS))})")
    split = eval_split(dataset)
    registry_check(dataset, root, "train", "data.root")
    registry_check(dataset, root, split, "data.root")
    return DataSpec(dataset, "train", root=str(root)), DataSpec(dataset, split, root=str(root))


def fewshot_specs(name: str, s: Any, test_size_default: int | None) -> tuple[DataSpec, DataSpec]:
    """Train / test splits of few-shot data set ``name`` (``s``: the :class:`FewshotSettings` section)."""
    test_size = s.test_size if s.test_size is not None else test_size_default
    if name in generated_sets():
        return DataSpec(name, "train", size=s.train_size), DataSpec(name, eval_split(name), size=test_size)
    roots = s.roots or {}
    root = roots.get(name, s.root)
    key = f"fewshot.roots.{name}"
    if name in DATASETS:
        base = check_dir(f"few-shot data set {name!r}", root, key)
        split = eval_split(name)
        registry_check(name, base, "train", key)
        registry_check(name, base, split, key)
        return DataSpec(name, "train", root=str(base)), DataSpec(name, split, root=str(base))
    if name not in roots:
        raise ConfigError(f"fewshot.datasets: unknown data set {name!r} (registered: {', '.join(sorted(DATASETS))}); "
                          f"an ImageFolder set (e.g. CUB-200, UC Merced) needs {key}=/path with train/ and test/")
    base = check_dir(f"few-shot data set {name!r} (ImageFolder)", roots[name], key)
    if not (base / "train").is_dir():
        raise ConfigError(f"few-shot data set {name!r} (ImageFolder): no {base / 'train'}; expected "
                          f"<root>/train/<class>/* and <root>/test/<class>/* (or val/)")
    split = "test" if (base / "test").is_dir() else "val"
    if not (base / split).is_dir():
        raise ConfigError(f"few-shot data set {name!r} (ImageFolder): no {base / 'test'} or {base / 'val'}")
    return (DataSpec("imagefolder", "train", label=name, root=str(base)),
            DataSpec("imagefolder", split, label=name, root=str(base)))


__all__ = ["BUILTIN_FEWSHOT_SETS", "BUILTIN_SEED", "DataSpec", "IMAGENET_NAMES", "check_dir", "check_root_is_read",
           "check_setting_roots", "eval_split", "family", "fewshot_specs", "generated_sets", "imagenet_specs",
           "main_specs", "num_classes", "registry_check"]
