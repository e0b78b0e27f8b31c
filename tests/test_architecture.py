"""The shape the storage layer keeps: one interface for index backends."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from kontextual_engine import storage
from kontextual_engine.storage.backend import IndexBackend
from kontextual_engine.storage.contract import KnowledgeRepository
from kontextual_engine.storage.memory import MemoryIndex
from kontextual_engine.storage.sqlite.repository import SQLiteIndex


def _storage_modules() -> list[str]:
    prefix = f"{storage.__name__}."
    return [info.name for info in pkgutil.walk_packages(storage.__path__, prefix)]


def test_abstract_methods_are_declared_in_one_module_only() -> None:
    """What a storage backend must provide is declared once: the index backend
    interface. The contract and the backends declare no abstract method."""
    declaring = set()
    for name in _storage_modules():
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
