"""The validation record (deconcnn.sweep.validated): what passed holds only in the environment it
passed in; a changed --config-dir file, module or package listing voids it; a damaged record is
ignored. (A relaunch that reuses it, and one that does not: tests/sweep/test_scale.py.)"""

from __future__ import annotations

import importlib
import json
import sys

import pytest

from deconcnn.runlog.layout import VALIDATED_FILE
from deconcnn.sweep.validated import Validations, overrides_key

RUN = ("experiment=loss_lin_slope_base", "seed=3")


def recorded(sweep_dir, config_lines=()) -> Validations:
    validations = Validations(sweep_dir, config_lines)
    validations.add_sources([(overrides_key(RUN), "deconcnn.training.data.SyntheticCifar")])
    validations.add_named(overrides_key(RUN[:1]), "deconcnn.training.data.SyntheticCifar")
    validations.save()
    return validations


def test_a_record_holds_in_the_environment_it_was_made_in(tmp_path):
    recorded(tmp_path)
    again = Validations(tmp_path, ())
    assert again.sources == {overrides_key(RUN): "deconcnn.training.data.SyntheticCifar"}
    assert again.named and not again.added


def test_an_edited_config_dir_voids_the_record(tmp_path):
    conf = tmp_path / "conf" / "model"
    conf.mkdir(parents=True)
    (conf / "mine.yaml").write_text("width: 1\n")
    lines = [f"hydra.searchpath=['file://{tmp_path / 'conf'}']"]
    recorded(tmp_path, lines)
    assert Validations(tmp_path, lines).sources
    (conf / "mine.yaml").write_text("width: 2\n")
    assert Validations(tmp_path, lines).sources == {}


def test_an_edited_module_or_a_new_package_on_the_path_voids_the_record(tmp_path, monkeypatch):
    code = tmp_path / "code"
    code.mkdir()
    (code / "mod_21e_valid.py").write_text("A = 1\n")
    monkeypatch.syspath_prepend(str(code))
    importlib.import_module("mod_21e_valid")
    try:
        recorded(tmp_path)
        assert Validations(tmp_path, ()).sources
        (code / "mod_21e_valid.py").write_text("A = 12\n")  # loaded by the validating process, now edited
        assert Validations(tmp_path, ()).sources == {}
        recorded(tmp_path)
        (code / "__pycache__").mkdir()  # what any import beside the launch creates: no module in it
        assert Validations(tmp_path, ()).sources
        (code / "newpkg_21e").mkdir()  # a package that may now shadow or serve an import
        assert Validations(tmp_path, ()).sources == {}
    finally:
        sys.modules.pop("mod_21e_valid", None)


@pytest.mark.parametrize(
    "text",
    ["{", "[]", '{"version": 1, "sources": [], "named": {}}', '{"version": 2, "sources": {}, "named": {}}'],
)
def test_a_damaged_record_is_ignored(tmp_path, text):
    recorded(tmp_path)
    (tmp_path / VALIDATED_FILE).write_text(text)
    assert Validations(tmp_path, ()).sources == {}


def test_launcher_settings_are_kept_when_json_gives_them_back_as_they_are(tmp_path):
    validations = recorded(tmp_path)
    validations.add_launcher("plain", {"partition": "gpu", "mem_gb": 16, "setup": ["module load x"], "qos": None})
    validations.add_launcher("tuple", {"array": (1, 2)})  # JSON would give a list back: not kept
    validations.save()
    assert Validations(tmp_path, ()).launchers == {
        "plain": {"partition": "gpu", "mem_gb": 16, "setup": ["module load x"], "qos": None}
    }


def test_a_record_written_before_launcher_settings_were_kept_still_holds(tmp_path):
    recorded(tmp_path)
    path = tmp_path / VALIDATED_FILE
    data = json.loads(path.read_text())
    del data["launchers"]  # as the code before wrote it
    path.write_text(json.dumps(data))
    again = Validations(tmp_path, ())
    assert again.sources == {overrides_key(RUN): "deconcnn.training.data.SyntheticCifar"}
    assert again.launchers == {}
