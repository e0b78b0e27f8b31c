"""What the package offers at its top level."""

from __future__ import annotations

import dataclasses
import enum
import inspect

import kontextual_engine
from kontextual_engine import models


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
