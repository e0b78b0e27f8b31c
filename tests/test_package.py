"""What the package offers at its top level."""

from __future__ import annotations

import dataclasses
import enum
import importlib.metadata
import inspect

import pytest

import kontextual_engine
from kontextual_engine import models, storage


def test_every_public_record_and_enum_is_importable_from_the_top_level() -> None:
    public = {
        name
        for name, value in vars(models).items()
        if not name.startswith("_")
        and inspect.isclass(value)
        and value.__module__ == models.__name__
        and (dataclasses.is_dataclass(value) or issubclass(value, enum.Enum))
    }
    assert {"Pin", "ContextReference", "OperationRun", "MetadataMode"} <= public
    missing = public - set(kontextual_engine.__all__)
    assert not missing, f"not exported from kontextual_engine: {sorted(missing)}"
    for name in kontextual_engine.__all__:
        assert hasattr(kontextual_engine, name), name


def test_the_version_is_the_installed_distributions() -> None:
    """``kontextual --version`` prints ``__version__`` without reading the metadata."""
    assert kontextual_engine.__version__ == importlib.metadata.version("kontextual-engine")


def test_public_names_are_listed_and_an_unknown_one_is_an_attribute_error() -> None:
    assert set(kontextual_engine.__all__) <= set(dir(kontextual_engine))
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchName'"):
        _ = kontextual_engine.NoSuchName
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchName'"):
        _ = storage.NoSuchName
