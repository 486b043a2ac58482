"""Regenerate the pictures and tables of docs/ARCHITECTURE.md from the code: the stage DAG (`dvc dag --mermaid`),
what each stage reads and writes (dvc.yaml), the import layers and the core's levels (grimp, the graph import-linter
checks) and the quantization modes (edgeopt.quantizers).

    python docs/generate_architecture.py          # rewrite the generated sections in place
    python docs/generate_architecture.py --check  # exit 1 when the document is not what the code says (CI)

Each section sits between `<!-- generated: NAME -->` and `<!-- end: NAME -->`; the text around them is written
by hand.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "ARCHITECTURE.md"
sys.path.insert(0, str(REPO))

# the application layers above the core (the import-linter contracts in pyproject.toml), top first
LAYERS = ("edgeopt.cli", "flows", "benchmarks", "stages")
CORE = "edgeopt"


def dag() -> str:
    out = subprocess.run([sys.executable, "-m", "dvc", "dag", "--mermaid"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    return "```mermaid\n" + out.strip().replace("\t", "    ") + "\n```"


def files() -> str:
    from edgeopt.pipeline import execution_order, load_pipeline

    specs = load_pipeline(REPO)
    code = ("edgeopt/", "stages/")
    rows = ["| stage | reads | writes |", "|---|---|---|"]
    for name in execution_order(specs):
        spec = specs[name]
        reads = [d for d in spec.deps if not d.startswith(code)]
        rows.append(f"| {name} | {', '.join(f'`{d}`' for d in reads)} | {', '.join(f'`{o}`' for o in spec.outs)} |")
    return "\n".join(rows)


def _graph():
    import grimp

    return grimp.build_graph(*sorted({layer.split(".")[0] for layer in LAYERS}), cache_dir=None)


def layer_of(module: str) -> str:
    return next((layer for layer in LAYERS if module == layer or module.startswith(layer + ".")), CORE)


def layers() -> str:
    graph = _graph()
    edges = Counter((layer_of(a), layer_of(b)) for a in graph.modules for b in graph.find_modules_directly_imported_by(a)
                    if layer_of(a) != layer_of(b))
    names = {"edgeopt.cli": "edgeopt.cli (the edgeopt command)", "flows": "flows (Prefect)",
             "benchmarks": "benchmarks", "stages": "stages (one module per dvc.yaml stage)",
             CORE: "core library: edgeopt (its cli package aside)"}
    ids = {layer: f"L{i}" for i, layer in enumerate((*LAYERS, CORE))}
    lines = ["```mermaid", "flowchart TD"]
    lines += [f'    {ids[layer]}["{names[layer]}"]' for layer in ids]
    order = list(ids)
    for (a, b), n in sorted(edges.items(), key=lambda e: (order.index(e[0][0]), order.index(e[0][1]))):
        lines.append(f"    {ids[a]} -->|{n}| {ids[b]}")
    lines.append("```")
    return "\n".join(lines) + "\n\nArrows: imports from one layer into another (the number of importing module pairs)."


def core_levels() -> str:
    """The core's modules by level: level 0 imports no other core module, level n only modules of lower levels."""
    graph = _graph()

    def unit(m: str) -> str:  # a subpackage (edgeopt.quantizers) is one unit
        return ".".join(m.split(".")[:2])

    core = {unit(m) for m in graph.modules if layer_of(m) == CORE and m != CORE}
    deps = {u: set() for u in core}
    for m in graph.modules:
        if layer_of(m) == CORE and m != CORE:
            deps[unit(m)] |= {unit(b) for b in graph.find_modules_directly_imported_by(m)
                              if layer_of(b) == CORE and b != CORE and unit(b) != unit(m)}
    level: dict[str, int] = {}
    while len(level) < len(core):
        ready = [u for u in core if u not in level and deps[u] <= set(level)]
        if not ready:
            raise SystemExit(f"import cycle among {sorted(set(core) - set(level))}")
        for u in ready:
            level[u] = 1 + max((level[d] for d in deps[u]), default=-1)
    rows = ["| level | core modules (each imports only modules of lower levels) |", "|---|---|"]
    for n in range(max(level.values()) + 1):
        names = sorted(u.removeprefix(CORE + ".") for u in core if level[u] == n)
        rows.append(f"| {n} | {', '.join(names)} |")
    return "\n".join(rows)


def quantizers() -> str:
    from edgeopt import quantizers as q

    rows = ["| mode | runtime | precision | format | technique | chosen by |", "|---|---|---|---|---|---|"]
    for name, mode in q.available().items():
        how = "`quantize.modes`, `distill.quantize_modes`" if mode.listed else "`quantize.qat: true`"
        rows.append(f"| `{name}` | {mode.runtime} | {mode.precision} | {mode.format} | {mode.technique} | {how} |")
    return "\n".join(rows)


SECTIONS = {"dag": dag, "files": files, "layers": layers, "core": core_levels, "quantizers": quantizers}


def render(text: str) -> str:
    for name, make in SECTIONS.items():
        pattern = re.compile(rf"(<!-- generated: {name} -->\n)(?:.*?\n)?(<!-- end: {name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"{DOC}: no section `<!-- generated: {name} -->` ... `<!-- end: {name} -->`")
        body = make()
        text = pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when docs/ARCHITECTURE.md is out of date")
    args = ap.parse_args(argv)
    current = DOC.read_text()
    wanted = render(current)
    if args.check:
        if wanted != current:
            print(f"{DOC.relative_to(REPO)} is out of date: run `python docs/generate_architecture.py`",
                  file=sys.stderr)
            return 1
        return 0
    if wanted != current:
        DOC.write_text(wanted)
        print(f"rewrote {DOC.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
