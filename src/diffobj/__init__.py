"""diffobj: a declarative workbench for the science of diffusion training objectives."""

from pathlib import Path

# the checkout this code runs from (src/diffobj/__init__.py -> the repository root): its config/
# holds the default libraries a spec outside a project falls back on
REPO_ROOT = Path(__file__).resolve().parents[2]
