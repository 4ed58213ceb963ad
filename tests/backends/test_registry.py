"""The backend registry: the installed backends come from entry points, `auto` picks the available
one of highest priority, a kind asked by name must be available, an unknown kind is one line."""

from __future__ import annotations

import pytest
from contract import registered
from fake_backend import FakeBackend

from deconcnn.backends import AUTO, BackendError, Handle, registry
from deconcnn.backends.local import LocalBackend
from deconcnn.backends.slurm import SlurmBackend


def test_the_installed_backends_are_the_entry_points_of_the_package():
    assert registry.kinds()[:2] == ("local", "slurm")
    assert registry.backend_class("local") is LocalBackend and registry.backend_class("slurm") is SlurmBackend


def test_auto_is_slurm_where_a_controller_answers_else_local(monkeypatch):
    monkeypatch.setattr(SlurmBackend, "unavailable", classmethod(lambda cls: "no controller"))
    assert registry.resolve(AUTO) is LocalBackend
    monkeypatch.setattr(SlurmBackend, "unavailable", classmethod(lambda cls: None))
    assert registry.resolve(AUTO) is SlurmBackend


def test_a_backend_asked_by_name_must_be_available_unless_a_plan_is_made_for_elsewhere(monkeypatch):
    monkeypatch.setattr(SlurmBackend, "unavailable", classmethod(lambda cls: "no SLURM controller answers here"))
    with pytest.raises(BackendError, match="--executor slurm: no SLURM controller answers here"):
        registry.resolve("slurm")
    assert registry.resolve("slurm", require_available=False) is SlurmBackend


def test_an_unknown_kind_is_refused_naming_the_installed_ones():
    with pytest.raises(BackendError, match=r"--executor must be auto, local or slurm, got 'ray'"):
        registry.resolve("ray")
    with pytest.raises(BackendError, match="no backend 'ray' is installed here"):
        registry.attach(Handle("ray", "1"))


def test_a_registered_backend_is_found_by_kind_never_chosen_automatically():
    with registered(FakeBackend):
        assert registry.kinds()[-1] == FakeBackend.kind
        assert isinstance(registry.attach(Handle(FakeBackend.kind, "1")), FakeBackend)
        assert registry.resolve(AUTO) is not FakeBackend  # auto_priority None
    assert FakeBackend.kind not in registry.kinds()


def test_an_entry_point_that_is_not_a_backend_of_its_kind_is_refused(monkeypatch):
    class Point:
        name, value = "bogus", "somewhere:Thing"

        def load(self):
            return LocalBackend  # kind "local", not "bogus"

    monkeypatch.setattr(registry, "_entry_points", lambda: {"bogus": Point()})
    with pytest.raises(BackendError, match="is not a Backend of kind 'bogus'"):
        registry.backend_class("bogus")


def test_an_install_without_the_entry_points_says_to_reinstall(monkeypatch):
    monkeypatch.setattr(registry, "_entry_points", dict)
    with pytest.raises(BackendError, match=r"no backend is installed: reinstall deconcnn"):
        registry.resolve(AUTO)
