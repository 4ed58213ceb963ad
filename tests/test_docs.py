"""The docs work as written: every README command block that needs no cluster and no dataset (the
```bash ones; cluster and CIFAR-10 commands are ```sh) runs, its lines in order in one directory (a
line may use what the lines above it made), and the docs name only files that exist. That directory
holds a copy of the bring-your-own example (docs/byo/), as a user's project directory would."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "benchmarks" / "README.md"]
BASH_BLOCK = re.compile(r"```bash\n(.*?)```", re.DOTALL)
# Paths the docs name, relative to the repository: markdown links and `code` spans.
LINK = re.compile(r"\]\(((?!https?:|#)[^)#]+)")
CODE_PATH = re.compile(r"`((?:deconcnn|conf|sweeps|scripts|containers|benchmarks|docs|tests)/[\w./-]*)`")


def blocks(markdown: str) -> list[list[str]]:
    """The commands of each ```bash block."""
    out = []
    for block in BASH_BLOCK.findall(markdown):
        lines = [line.split("  #")[0].strip() for line in block.replace("\\\n", " ").splitlines()]
        out.append([line for line in lines if line and not line.startswith("#")])
    return out


def commands(markdown: str) -> list[str]:
    return [command for block in blocks(markdown) for command in block]


@pytest.mark.slow
@pytest.mark.parametrize("block", blocks((REPO / "README.md").read_text()), ids=lambda block: block[0][:60])
def test_readme_block_runs(tmp_path, block):
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
    }
    shutil.copytree(REPO / "docs" / "byo", tmp_path, dirs_exist_ok=True)
    for command in block:
        result = subprocess.run(
            shlex.split(command), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, command + "\n" + result.stdout[-1500:] + result.stderr[-1500:]


def test_the_readme_has_runnable_blocks():
    assert len(commands((REPO / "README.md").read_text())) >= 3


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_docs_name_only_files_that_exist(doc):
    text = doc.read_text()
    missing = []
    for target in LINK.findall(text):
        if not (doc.parent / target).exists() and not (REPO / target).exists():
            missing.append(target)
    for target in CODE_PATH.findall(text):
        generated = "/results/" in target  # what a benchmark writes
        if not (REPO / target.rstrip("/")).exists() and not generated and not any(ch in target for ch in "<*"):
            missing.append(target)
    assert not missing, missing
    assert "shared/README" not in text and not re.search(r"\bissue \d", text)
