"""Which real images the realistic benchmark uses: the CIFAR-10 subset beside the repo, else CIFAR-10 under
data.root, else the digits set (with a note saying the numbers are not CIFAR numbers)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

DEFAULT_IMAGEFOLDER = "../shared/data/cifar10-subset/train"  # relative to the repository


def _is_imagefolder(path: Path) -> bool:
    return path.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir())


def _cifar_root(path: Path) -> Path | None:
    """The folder holding cifar-10-batches-py (given it, its parent, or the batches folder itself)."""
    if path.name == "cifar-10-batches-py" and path.is_dir():
        return path.parent
    return path if (path / "cifar-10-batches-py").is_dir() else None


def resolve(data_arg: str | None, repo: Path, params_data_root: str) -> dict[str, Any]:
    """{"overrides": {...data.* params...}, "source", "root", "note"}; raises ValueError for a bad --data."""
    rgb = {"data.channels": 3, "data.image_size": 32, "data.resize": True}
    if data_arg:
        given = Path(data_arg).expanduser()
        path = next((p for p in ([given] if given.is_absolute() else [Path.cwd() / given, repo / given])
                     if p.exists()), None)
        if path is None:
            raise ValueError(f"--data {data_arg}: not found (looked in {Path.cwd()} and {repo})")
        path = path.resolve()
        cifar = _cifar_root(path)
        if cifar is not None:
            return {"source": "cifar10", "root": str(cifar), "note": f"CIFAR-10 from --data {data_arg}",
                    "overrides": {"data.source": "cifar10", "data.root": str(cifar), "data.download": False, **rgb}}
        if _is_imagefolder(path):
            return {"source": "imagefolder", "root": str(path), "note": f"image folder from --data {data_arg}",
                    "overrides": {"data.source": "imagefolder", "data.root": str(path), **rgb}}
        raise ValueError(f"--data {path}: neither an image folder (root/<class>/<image>) nor a folder holding "
                         "cifar-10-batches-py")
    subset = (repo / DEFAULT_IMAGEFOLDER).resolve()
    if _is_imagefolder(subset):
        return {"source": "imagefolder", "root": str(subset),
                "note": f"real CIFAR-10 images (subset) from {DEFAULT_IMAGEFOLDER}",
                "overrides": {"data.source": "imagefolder", "data.root": str(subset), **rgb}}
    root = Path(params_data_root)
    root = root if root.is_absolute() else repo / root
    cifar = _cifar_root(root)
    if cifar is not None:
        return {"source": "cifar10", "root": str(cifar), "note": f"CIFAR-10 found under data.root ({root})",
                "overrides": {"data.source": "cifar10", "data.root": str(cifar), "data.download": False, **rgb}}
    return {"source": "digits", "root": None,
            "note": (f"NO REAL IMAGES FOUND ({DEFAULT_IMAGEFOLDER} missing, no cifar-10-batches-py under "
                     f"data.root={params_data_root}): the 'realistic' run used the digits set (8x8 upscaled to 16x16 "
                     "grayscale); its accuracy, size and latency are not CIFAR-10 figures. Pass --data PATH."),
            "overrides": {"data.source": "digits", "data.channels": 1, "data.image_size": 16}}
