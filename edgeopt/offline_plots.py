"""`edgeopt plots-offline`: make `dvc plots show` pages work without internet.

DVC's HTML template loads Vega, Vega-Lite and Vega-Embed from a CDN, so on an air-gapped machine (or when the
CDN is blocked) `dvc_plots/index.html` shows no chart. This downloads the exact versions DVC's renderer asks for
from the npm registry once, checks their published sha512, and writes `.dvc/plots/offline.html`: DVC's page
with the three scripts inlined. `plots.html_template` then points DVC at it, so every later `dvc plots show`
/ `dvc plots diff` page is self-contained.
"""
from __future__ import annotations

import base64
import hashlib
import io
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

# (package, version, file inside the tarball, npm's dist.integrity): the versions dvc_render's VegaRenderer loads
PACKAGES = (
    ("vega", "5.20.2", "package/build/vega.min.js",
     "sha512-qmH7aD9GGPpssVdxL1xgcdxTbQzyRUeRR16Os385ymvQhiwCYQNA6+eXUPAZDTVLfk0RXu6Jzj6kUE5jQ80EVw=="),
    ("vega-lite", "5.2.0", "package/build/vega-lite.min.js",
     "sha512-Yxcg8MvYfxHcG6BbkaKT0oVCIMIcE19UvqIsEwBmyd/7h2nzW7oRnID81T8UrY7hpDrIr6wa2JADOT2dhGNErw=="),
    ("vega-embed", "6.18.2", "package/build/vega-embed.min.js",
     "sha512-wcDyQPE4J5aiCDc3/suH5RQDvrKkjuLkhzUcbOLwEkNF8/+pp17tS0JghzEvAPNRg+5aG1/N2ydixq8Lk3dOlg=="),
)
REGISTRY = "https://registry.npmjs.org"
TEMPLATE = Path("plots") / "offline.html"  # relative to .dvc/, as DVC resolves plots.html_template


def fetch(package: str, version: str, member: str, integrity: str, registry: str = REGISTRY) -> str:
    url = f"{registry}/{package}/-/{package}-{version}.tgz"
    with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 (a fixed https URL)
        data = response.read()
    digest = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    if digest != integrity:
        raise RuntimeError(f"{url}: sha512 {digest} is not the published {integrity}; not used")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.extractfile(member).read().decode()


def page(scripts: list[str]) -> str:
    """DVC's own page template with the scripts inlined instead of its CDN <script src> tags."""
    from dvc_render.html import PAGE_HTML

    safe = [s.replace("</script", "<\\/script") for s in scripts]  # a literal end tag would close the element
    inline = "\n".join(f'<script type="text/javascript">\n{s}\n</script>' for s in safe)
    return PAGE_HTML.replace("{scripts}", inline)


def install(project: Path, scripts: list[str]) -> Path:
    target = project / ".dvc" / TEMPLATE
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(page(scripts))
    subprocess.run([sys.executable, "-m", "dvc", "config", "--local", "plots.html_template", TEMPLATE.as_posix()],
                   cwd=project, check=True, capture_output=True)
    return target


def main(argv: list[str] | None = None) -> int:
    project = Path(argv[0] if argv else ".")
    if not (project / ".dvc").is_dir():
        print(f"edgeopt plots-offline: error: {project} is not a DVC project (no .dvc/)", file=sys.stderr)
        return 2
    try:
        scripts = [fetch(*p) for p in PACKAGES]
    except (OSError, RuntimeError) as exc:
        print(f"edgeopt plots-offline: error: {exc}", file=sys.stderr)
        return 1
    target = install(project, scripts)
    print(f"wrote {target}; `dvc plots show` pages now embed Vega and work offline")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
