"""Rewrite the RayServices' ``serveConfigV2`` from the committed ``serve/config.yaml``, keeping each manifest's
cluster values (``manifests.SERVE_ARG_OVERRIDES`` and the http host). Run after ``serve build`` changes the config:

    python -m sepsis_rl.deploy.serve_sync          # rewrites k8s/*/rayservice.yaml in place (comments kept)
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from sepsis_rl.deploy.manifests import for_cluster

ROOT = Path(__file__).resolve().parents[2]
KEY = "serveConfigV2: |"


def sync_text(manifest: str, reference: dict) -> str:
    """The manifest with its serveConfigV2 block replaced; the rest of the file is left byte for byte."""
    lines = manifest.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.strip() == KEY)
    indent = len(lines[start]) - len(lines[start].lstrip()) + 2
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) >= indent):
        end += 1
    current = yaml.safe_load("".join(line[indent:] for line in lines[start + 1:end])) or {}
    body = yaml.safe_dump(for_cluster(reference, current), sort_keys=False, default_flow_style=False)
    block = [" " * indent + line + "\n" for line in body.splitlines()]
    return "".join(lines[: start + 1] + block + lines[end:])


def main() -> int:
    reference = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    for path in sorted((ROOT / "k8s").glob("*/rayservice.yaml")):
        path.write_text(sync_text(path.read_text(), reference))
        print(f"updated {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
