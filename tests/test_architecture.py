"""The shape the storage layer keeps: one interface for index backends."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import kontextual_engine
from kontextual_engine.storage.backend import IndexBackend
from kontextual_engine.storage.contract import KnowledgeRepository
from kontextual_engine.storage.memory import MemoryIndex
from kontextual_engine.storage.sqlite.repository import SQLiteIndex


def _modules() -> list[str]:
    return [
        info.name
        for info in pkgutil.walk_packages(kontextual_engine.__path__, "kontextual_engine.")
        if not info.name.endswith("__main__")
    ]


def test_abstract_methods_are_declared_in_one_module_only() -> None:
    declaring = set()
    for name in _modules():
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != name:
                continue
            own = {
                attribute
                for attribute, value in vars(cls).items()
                if getattr(value, "__isabstractmethod__", False)
            }
            if own:
                declaring.add(name)
    assert declaring == {"kontextual_engine.storage.backend"}


def test_every_index_backend_implements_the_one_interface_and_nothing_else_is_abstract() -> None:
    assert IndexBackend.__abstractmethods__
    for backend in (MemoryIndex, SQLiteIndex):
        assert issubclass(backend, IndexBackend)
        assert not inspect.isabstract(backend), backend.__abstractmethods__
    assert not inspect.isabstract(KnowledgeRepository)
