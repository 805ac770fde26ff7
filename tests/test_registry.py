"""The registry: names checked and listed without importing their modules, each imported on first use, and a
broken ``"module:object"`` entry named in its error."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from safety_prune.errors import ConfigError, RegistryError
from safety_prune.registry import Registry

PACKAGE = "registry_test_plugins"


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A plug-in package: two entries (``alpha``, ``beta``) defining ``THING``, and a helper module."""
    pkg = tmp_path / PACKAGE
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "alpha.py").write_text("THING = 'a'\n")
    (pkg / "beta.py").write_text("THING = 'b'\n")
    (pkg / "helpers.py").write_text("HELP = 1\n")
    (pkg / "needs_missing.py").write_text("import a_module_nobody_installed\nTHING = 'n'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield PACKAGE
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
        del sys.modules[name]


def test_discover_names_one_entry_per_file_and_imports_none(plugins: str) -> None:
    reg: Registry[str] = Registry.discover("plug-in", plugins, "THING", support=("helpers",))
    assert reg.names == ("alpha", "beta", "needs_missing")
    assert not [m for m in sys.modules if m.startswith(f"{plugins}.")]


def test_resolving_one_entry_imports_no_other(plugins: str) -> None:
    reg: Registry[str] = Registry.discover("plug-in", plugins, "THING", support=("helpers",))
    assert reg.get("alpha") == "a"
    assert f"{plugins}.alpha" in sys.modules and f"{plugins}.beta" not in sys.modules
    assert reg.get("beta") == "b"


def test_unknown_name_lists_the_known_names(plugins: str) -> None:
    reg: Registry[str] = Registry.discover("plug-in", plugins, "THING", support=("helpers",))
    with pytest.raises(ConfigError, match=r"^The plug-in 'alpah' is unknown \(did you mean 'alpha'\? available: "
                                          r"alpha, beta, needs_missing\)\.$"):
        reg.get("alpah")
    with pytest.raises(ConfigError, match=r"^--kind 'zzz' is unknown \(available: all, alpha, beta, needs_missing\)"):
        raise reg.unknown("zzz", "--kind", also=("all",))
    assert "gamma" not in reg and "alpha" in reg and len(reg) == 3


@pytest.mark.parametrize("target, message", [
    ("registry_test_plugins.alpha", r"'broken' is registered as 'registry_test_plugins.alpha'; a registry entry "
                                    r"must read 'package.module:object'"),
    (":THING", r"must read 'package.module:object'"),
])
def test_malformed_entry_is_refused_when_declared(target: str, message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        Registry("plug-in", {"broken": target})


@pytest.mark.parametrize("target, message", [
    ("registry_test_plugins.gamma:THING", r"The plug-in 'broken' is registered as "
                                          r"'registry_test_plugins.gamma:THING', and the module "
                                          r"registry_test_plugins.gamma does not exist"),
    ("no_such_top_level_package:THING", r"the module no_such_top_level_package does not exist"),
    ("registry_test_plugins.alpha:THIGN", r"and registry_test_plugins.alpha defines no THIGN"),
])
def test_entry_that_does_not_resolve_names_its_target(plugins: str, target: str, message: str) -> None:
    reg: Registry[str] = Registry("plug-in", {"broken": target})
    with pytest.raises(RegistryError, match=message):
        reg.get("broken")


def test_a_missing_dependency_of_an_entry_is_not_reported_as_a_bad_entry(plugins: str) -> None:
    reg: Registry[str] = Registry.discover("plug-in", plugins, "THING")
    with pytest.raises(ModuleNotFoundError, match="a_module_nobody_installed"):
        reg.get("needs_missing")


def test_the_real_registries_check_names_without_torch() -> None:
    """Scorer, ranking and family names are listed and checked before torch loads; in a subprocess, so that other
    tests' imports cannot mask a torch import."""
    code = ("import sys\n"
            "from safety_prune.scorers import SCORERS\n"
            "from safety_prune.methods import RANKINGS, check_ranking\n"
            "from safety_prune.families import FAMILIES\n"
            "assert {'profanity', 'toxblock'} <= set(SCORERS) and 'lrp' in RANKINGS and 'llama' in FAMILIES\n"
            "try:\n"
            "    check_ranking('lpr', 'neuron')\n"
            "except Exception as exc:\n"
            "    assert \"did you mean 'lrp'?\" in str(exc), exc\n"
            "assert SCORERS.get('profanity').name == 'profanity'\n"
            "assert 'safety_prune.scorers.detoxify' not in sys.modules\n"
            "assert 'torch' not in sys.modules, 'torch'\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
