"""Where releases are: a project's registry root, and a release named on a command line (a pulled directory or
`registry:<model>@<version|channel>`), verified before anything runs it. Torch-free; pydantic only when a
params file names the registry root."""
from __future__ import annotations

from pathlib import Path

from edgeopt.errors import RegistryError

REGISTRY_PREFIX = "registry:"


def registry_root(registry: str | None = None, root: str | Path = ".", params: str | Path = "params.yaml",
                  overrides: list[str] | None = None) -> Path:
    """The registry directory: `registry` when given, else `registry.root` of the project's params (relative to
    `root`; in a DVC experiment, to the experiment's project). A device without params.yaml gets its default."""
    from edgeopt.paths import Paths

    if registry is not None:
        if not registry.strip():
            raise RegistryError("--registry '' refused: give the registry directory (an empty path would be the "
                                "current directory)")
        return Path(registry)
    paths = Paths(Path(root))
    if not Path(params).exists() and not overrides:
        return paths.registry("registry")  # the default of params.yaml: lets a device run without one
    from edgeopt.params import load_params

    return paths.registry(load_params(params, overrides).registry.root)


def resolve_release(release: str, registry: str | None = None, params: str | Path = "params.yaml",
                    root: str | Path = ".", overrides: list[str] | None = None) -> Path:
    """The verified release directory for a directory path or a registry:<ref>."""
    from edgeopt.registry import Registry, verify_dir

    if release.startswith(REGISTRY_PREFIX):
        reg = Registry(registry if registry is not None else registry_root(None, root, params, overrides))
        model, version = reg.resolve(release[len(REGISTRY_PREFIX):])
        problems = reg.verify(model, version)
        directory = reg.release_dir(model, version)
    else:
        directory = Path(release)
        if not (directory / "manifest.json").is_file():
            raise RegistryError(f"{directory}: no manifest.json; pass a pulled release directory "
                                f"(`edgeopt registry pull MODEL@CHANNEL --to DIR`) or registry:<model>@<channel>")
        problems = verify_dir(directory, pulled=True)
    if problems:
        raise RegistryError(f"{release}: release fails verification, refusing to run it: " + "; ".join(problems))
    return directory
