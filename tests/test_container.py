"""The container recipes in containers/: what they copy and which install steps they run.

The images themselves need a container registry to build (their base image), so the slow test runs
the Apptainer recipe's own %files and %post, read from containers/deconcnn.def, in a fresh venv
with the torch that `make install` uses here, then the recipe's %test: the whole stack must import.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTAINERS = ROOT / "containers"
IMAGE_CHECKOUT = "/opt/deconcnn"  # where both recipes put the checkout
TEMPLATE = re.compile(r"\{\{\s*(\w+)\s*\}\}")


@dataclass
class DefFile:
    header: dict[str, str]
    sections: dict[str, list[str]]  # section name -> its lines, comments and blank lines dropped

    def arguments(self) -> dict[str, str]:
        return dict(line.split("=", 1) for line in self.sections["arguments"])

    def files(self) -> list[tuple[str, str]]:
        return [tuple(line.split()) for line in self.sections["files"]]  # type: ignore[misc]

    def script(self, section: str, build_args: dict[str, str]) -> str:
        """A section's shell lines with the {{ }} templates filled as `apptainer build` fills them."""
        values = {**self.arguments(), **build_args}
        return "\n".join(TEMPLATE.sub(lambda m: values[m.group(1)], line) for line in self.sections[section])


def parse_def(path: Path) -> DefFile:
    header: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    current: str | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("%"):
            current = line[1:].split()[0]
            sections.setdefault(current, [])
        elif current is None:
            key, _, value = line.partition(":")
            header[key.strip()] = value.strip()
        else:
            sections[current].append(line)
    return DefFile(header, sections)


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]  # type: ignore[misc]


def ci_torch_pin() -> str:
    pins = [
        line.strip()
        for line in (ROOT / "constraints-dev.txt").read_text().splitlines()
        if line.strip().startswith("torch==")
    ]
    assert len(pins) == 1, "constraints-dev.txt pins torch once"
    return pins[0]


def test_the_def_file_fills_every_template_and_copies_what_the_install_needs():
    recipe = parse_def(CONTAINERS / "deconcnn.def")
    assert recipe.header["Bootstrap"] == "docker"
    used = set(TEMPLATE.findall((CONTAINERS / "deconcnn.def").read_text()))
    assert used <= set(recipe.arguments()), "apptainer build refuses a template without a value"
    copied = dict(recipe.files())
    for source, destination in copied.items():
        assert (ROOT / source).exists(), f"%files source {source} is not in the checkout"
        assert destination == f"{IMAGE_CHECKOUT}/{source}"
    # What `pip install -e` and the runs read: the package, its metadata and readme, the configs.
    assert {"pyproject.toml", "README.md", "deconcnn", "conf", "containers"} <= set(copied)
    assert f"{IMAGE_CHECKOUT}/containers/install.sh {IMAGE_CHECKOUT}" in recipe.script("post", {})
    assert "export PYTHONNOUSERSITE=1" in recipe.sections["environment"]


def test_the_dockerfile_copies_and_installs_as_the_def_file_does():
    recipe = parse_def(CONTAINERS / "deconcnn.def")
    instructions = dockerfile_instructions(CONTAINERS / "Dockerfile")
    args = dict(value.split("=", 1) for op, value in instructions if op == "ARG")
    assert args == recipe.arguments()
    copied: dict[str, str] = {}
    for op, value in instructions:
        if op == "COPY":
            *sources, destination = value.split()
            copied.update(
                {s: destination.rstrip("/") + ("/" + s if destination.endswith("/") else "") for s in sources}
            )
    assert copied == dict(recipe.files())
    assert ("RUN", f"sh {IMAGE_CHECKOUT}/containers/install.sh {IMAGE_CHECKOUT}") in instructions
    ignore = (CONTAINERS / "Dockerfile.dockerignore").read_text().splitlines()
    assert "*" in ignore and {f"!{source}" for source in copied} <= set(ignore), "the build context lacks a copied path"


def test_the_images_default_torch_is_the_version_ci_tests():
    assert parse_def(CONTAINERS / "deconcnn.def").arguments()["TORCH_SPEC"] == ci_torch_pin()


def test_the_stack_check_names_a_dependency_that_does_not_import(tmp_path):
    # What a torchvision built for another torch does to `import pytorch_lightning`.
    broken = tmp_path / "pytorch_lightning"
    broken.mkdir()
    (broken / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, str(CONTAINERS / "check_stack.py")], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "check_stack: import pytorch_lightning failed: RuntimeError: operator torchvision::nms does not exist"
    )


@pytest.mark.slow
def test_the_def_files_install_steps_give_a_venv_where_the_whole_stack_imports(tmp_path):
    recipe = parse_def(CONTAINERS / "deconcnn.def")
    checkout = tmp_path / "opt" / "deconcnn"
    for source, _ in recipe.files():  # %files, with the image's /opt/deconcnn under tmp_path
        destination = checkout / source
        destination.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, destination, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / source, destination)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    # `make install`'s torch: the CI pin, resolved by this machine's pip configuration (the CPU wheel
    # on disk here), as a --build-arg would choose it; empty index: pip's configured one.
    build_args = {"TORCH_SPEC": ci_torch_pin(), "TORCH_INDEX_URL": ""}
    env = {**os.environ, "PATH": f"{env_dir / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)

    def run(section: str) -> str:
        script = recipe.script(section, build_args).replace(IMAGE_CHECKOUT, str(checkout))
        done = subprocess.run(["sh", "-e", "-c", script], env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"%{section} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    run("post")
    assert "the deconcnn stack imports" in run("test")
    installed = subprocess.run(
        [str(env_dir / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert "torchvision" not in {line.split("==")[0] for line in installed}
    torch_version = ci_torch_pin().split("==")[1]
    assert any(re.fullmatch(rf"torch=={re.escape(torch_version)}(\+\w+)?", line) for line in installed), (
        "pip replaced the chosen torch build"
    )
