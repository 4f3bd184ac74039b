"""Every docstring example of the recallstream packages, run under the installed module names.

pytest's ``--doctest-modules`` imports ``model/online.py`` as a top-level ``model.online``
(the folder's name), a second copy beside ``recallstream.model.online``; this test imports
each module the way users do and runs its examples with pytest's default flags.
"""

import doctest
import importlib
import pkgutil

import pytest

PACKAGES = ["recallstream.streaming", "recallstream.model", "recallstream.consumers"]


def _modules() -> list[str]:
    names = []
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        names.append(package_name)
        names += [info.name for info in pkgutil.walk_packages(package.__path__, package_name + ".")]
    return sorted(names)


def test_every_package_module_is_found():
    modules = _modules()
    assert "recallstream.model.online" in modules
    assert "recallstream.consumers.bench.pipeline" in modules


@pytest.mark.parametrize("module_name", _modules())
def test_docstring_examples(module_name):
    module = importlib.import_module(module_name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in doctest.DocTestFinder().find(module, module_name):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {module_name}"
