"""Import the whole deconcnn stack and say which torch build it has: the last step of
containers/install.sh. With --cuda, also require a GPU that torch computes on (run it on a GPU node:
docs/container.md).

Exits 1 with one line naming the first module that does not import (pytorch_lightning, when a
torchvision built for another torch is installed) or saying why the GPU is not usable.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

# Third-party first, so a broken dependency is named rather than the deconcnn module importing it;
# Hydra imports the launcher plugin only at launch time.
STACK = ("torch", "numpy", "scipy", "pytorch_lightning", "hydra",
         "hydra_plugins.hydra_submitit_launcher.submitit_launcher", "submitit", "backpack",
         "hessian_eigenthings", "matplotlib", "pyarrow", "rich", "deconcnn")


def modules() -> Iterator[str]:
    yield from STACK
    package = Path(importlib.import_module("deconcnn").__file__).parent
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_failure() -> str | None:
    """What the first module that does not import says, or None."""
    for name in modules():
        try:
            importlib.import_module(name)
        except Exception as error:  # whatever breaks an import (RuntimeError from torchvision)
            return f"import {name} failed: {type(error).__name__}: {str(error).splitlines()[0]}"
    return None


def cuda_problem() -> str | None:
    """Why torch cannot compute on a GPU here, or None."""
    import torch

    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU build: build the image with a CUDA index (TORCH_INDEX_URL)"
    if not torch.cuda.is_available():
        return (f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no usable GPU: run this with "
                "`apptainer exec --nv` on a GPU node; if nvidia-smi there shows a 'CUDA Version' below "
                f"{torch.version.cuda}, build the image with an older CUDA index (docs/container.md)")
    name = torch.cuda.get_device_name()
    try:
        x = torch.ones(64, 64, device="cuda")
        total = float((x @ x).sum())
    except RuntimeError as error:  # e.g. "no kernel image is available": a build without this GPU's architecture
        return f"a matrix product on {name} failed: {str(error).splitlines()[0]}"
    return None if total == 64.0**3 else f"a matrix product on {name} gave a wrong result"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cuda", action="store_true", help="also require a GPU that torch computes on")
    args = parser.parse_args(argv)
    problem = import_failure() or (cuda_problem() if args.cuda else None)
    if problem:
        print(f"check_stack: {problem}", file=sys.stderr)
        return 1
    import torch

    gpu = torch.cuda.get_device_name() if args.cuda else "not checked (--cuda)"
    print(f"check_stack: the deconcnn stack imports; torch {torch.__version__}, "
          f"CUDA build {torch.version.cuda or 'none'}, GPU {gpu}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
