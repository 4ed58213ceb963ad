#!/bin/sh
# Installs deconcnn from CHECKOUT into the python3 on PATH, with the torch build that TORCH_SPEC and
# TORCH_INDEX_URL choose, then checks that the whole stack imports. These are the install steps of
# containers/deconcnn.def and containers/Dockerfile; tests/test_container.py runs them in a venv.
#   TORCH_SPEC=torch==2.13.0 TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130 sh install.sh CHECKOUT
# An empty TORCH_INDEX_URL means pip's configured index (PyPI unless configured otherwise).
set -eu
checkout=${1:?usage: install.sh CHECKOUT}
: "${TORCH_SPEC:?TORCH_SPEC is unset: the torch requirement to install, e.g. torch==2.13.0}"
pip_install="python3 -m pip install --no-cache-dir"

$pip_install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$TORCH_SPEC"
# Pin the torch just installed: else torchvision (which backpack-for-pytorch declares) can make pip
# replace it with PyPI's build of another torch version, and with it the chosen CUDA version.
pin=$(mktemp)
python3 -c 'from importlib.metadata import version; print("torch==" + version("torch"))' > "$pin"
# Editable: deconcnn reads its Hydra configs from CHECKOUT/conf.
$pip_install -c "$pin" -e "$checkout"
rm -f "$pin"
# That torchvision does not load beside every torch build and then breaks `import pytorch_lightning`;
# BackPACK uses it only in its examples.
python3 -m pip uninstall -y torchvision
python3 "$checkout/containers/check_stack.py"
