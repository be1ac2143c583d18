"""The public functions that a pip user meets first carry numpydoc docstrings."""

from __future__ import annotations

import importlib
import inspect

import pytest

MODULES = ["tenflex.data", "tenflex.files", "tenflex.zoo"]


def _public_functions():
    for name in MODULES:
        module = importlib.import_module(name)
        for attr in module.__all__:
            obj = getattr(module, attr)
            if inspect.isfunction(obj) and obj.__module__ == name:
                yield pytest.param(obj, id=f"{name}.{attr}")


@pytest.mark.parametrize("module", ["tenflex", "tenflex.nn", *MODULES])
def test_every_name_in_all_exists(module):
    loaded = importlib.import_module(module)
    assert [name for name in loaded.__all__ if not hasattr(loaded, name)] == []


@pytest.mark.parametrize("function", list(_public_functions()))
def test_public_functions_document_parameters_and_returns(function):
    doc = inspect.getdoc(function) or ""
    signature = inspect.signature(function)
    if signature.parameters:
        assert "\nParameters\n----------\n" in doc
        for name in signature.parameters:
            # each parameter is described, alone or in a group ("name, dataset, ...")
            assert any(name in line.split(" : ")[0].replace(",", " ").replace("*", "").split()
                       for line in doc.splitlines() if not line.startswith(" ")), name
    if signature.return_annotation not in (None, "None", inspect.Signature.empty):
        assert "\nReturns\n-------\n" in doc
