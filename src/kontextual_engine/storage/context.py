"""The contract for context packages and external memory references.

A context package is an ordered, immutable list of references to artifacts
(pinned to a revision or following the current one), relationships, runs or
records of external systems; an external memory reference records that
another system holds a record about something here. :func:`check_reference`
is the one rule for what a package may name, used by the repository and by
the snapshot importer alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..errors import (
    ContextPackageNotFound,
    ExternalReferenceNotFound,
    IntegrityError,
    ValidationError,
)
from ..models import (
    ArtifactRevision,
    ChangeAction,
    ChangeRecord,
    ContextPackage,
    ContextReference,
    EntityKind,
    ExternalMemoryReference,
    ReferenceKind,
    canonical_object,
    check_external_fields,
    check_name,
    check_package_name,
    check_text,
)
from .backend import IndexBackend


@dataclass(frozen=True)
class ReferenceLookups:
    """How :func:`check_reference` sees the records a reference may point at.

    ``live_artifact(id)``: is it a live artifact; ``revision(id, n)``: that
    revision, or raise; ``relationship(id)`` and ``run(id)``: does it exist.
    The repository answers from its current state; the snapshot importer
    from the state its replay of the change records has reached.
    """

    live_artifact: Callable[[str], bool]
    revision: Callable[[str, int], ArtifactRevision]
    relationship: Callable[[str], bool]
    run: Callable[[str], bool]


def check_reference(ref: ContextReference, lookups: ReferenceLookups) -> ContextReference:
    """A context reference as a package stores it (pinned revisions get their digest),
    or raise: the one rule for what a package may name."""
    if not isinstance(ref, ContextReference):
        raise ValidationError(f"expected a ContextReference, got {type(ref).__name__}")
    try:
        kind = ReferenceKind(ref.kind)
    except ValueError:
        raise ValidationError(
            f"reference kind {ref.kind!r} is not one of {[k.value for k in ReferenceKind]}"
        ) from None
    if not check_text(ref.target_id, "reference target"):
        raise ValidationError("reference target must not be empty")
    for what, value in (("note", ref.note), ("uri", ref.uri)):
        if value is not None:
            check_text(value, f"reference {what}")
    if kind is ReferenceKind.EXTERNAL:
        check_name(ref.system, "external system")
        if ref.revision is not None or ref.digest is not None:
            raise ValidationError("an external reference has no revision or digest")
        return ref
    if ref.system is not None or ref.uri is not None:
        raise ValidationError(f"a {kind.value} reference has no system or uri")
    if kind is ReferenceKind.ARTIFACT:
        if ref.revision is None:
            if ref.digest is not None:
                raise ValidationError("a digest needs a pinned revision")
            if not lookups.live_artifact(ref.target_id):
                raise IntegrityError(f"context reference to missing artifact {ref.target_id!r}")
            return ref
        pinned = lookups.revision(ref.target_id, ref.revision)
        if ref.digest is not None and ref.digest != pinned.digest:
            raise IntegrityError(
                f"artifact {ref.target_id} revision {ref.revision} has digest "
                f"{pinned.digest}, not {ref.digest}"
            )
        return ContextReference(
            kind.value, ref.target_id, pinned.revision, pinned.digest, note=ref.note
        )
    if ref.revision is not None or ref.digest is not None:
        raise ValidationError(f"a {kind.value} reference has no revision or digest")
    if kind is ReferenceKind.RELATIONSHIP and not lookups.relationship(ref.target_id):
        raise IntegrityError(f"context reference to missing relationship {ref.target_id!r}")
    if kind is ReferenceKind.RUN and not lookups.run(ref.target_id):
        raise IntegrityError(f"context reference to missing run {ref.target_id!r}")
    return ref


class ContextRules:
    """Context packages and external references; a part of
    :class:`~.contract.KnowledgeRepository`."""

    # -- context packages --------------------------------------------------

    def create_context_package(
        self,
        name: str,
        references: Iterable[ContextReference],
        *,
        metadata: Mapping[str, Any] | None = None,
    ) -> ContextPackage:
        """An ordered, immutable list of references. Internal targets must exist."""
        check_package_name(name)
        metadata_json = canonical_object(metadata, "context package metadata")
        with self.transaction():
            checked = tuple(self._check_reference(ref) for ref in references)
            now = self._now()
            package = ContextPackage(
                id=self._ids("context_package"),
                name=name,
                metadata_json=metadata_json,
                references=checked,
                created_at=now,
                sequence=self.index.next_sequence(),
            )
            self.index.insert_context_package(package)
            self._record(
                package.sequence,
                EntityKind.CONTEXT_PACKAGE,
                package.id,
                ChangeAction.CREATE,
                now,
                details={"name": name, "references": len(checked)},
            )
            return package

    def get_context_package(self, package_id: str) -> ContextPackage:
        if not isinstance(package_id, str):
            raise ValidationError(f"context package id must be a string, got {package_id!r}")
        package = self.index.find_context_package(package_id)
        if package is None:
            raise ContextPackageNotFound(package_id)
        return package

    def list_context_packages(self) -> list[ContextPackage]:
        return self.index.list_context_packages()

    def _check_reference(self, ref: ContextReference) -> ContextReference:
        return check_reference(
            ref,
            ReferenceLookups(
                live_artifact=lambda artifact_id: self.index.find_artifact(artifact_id) is not None,
                revision=self._revision_or_current,
                relationship=lambda relationship_id: (
                    self.index.find_relationship(relationship_id) is not None
                ),
                run=lambda run_id: self.index.find_run(run_id) is not None,
            ),
        )

    # -- external memory references ----------------------------------------

    def record_external_reference(
        self,
        system: str,
        external_id: str,
        *,
        recorded_by: str,
        uri: str | None = None,
        artifact_id: str | None = None,
        revision: int | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> ExternalMemoryReference:
        """Record that ``system``'s record ``external_id`` exists (and what it points at here)."""
        check_external_fields(system, external_id, recorded_by, uri)
        metadata_json = canonical_object(metadata, "external reference metadata")
        with self.transaction():
            pinned = None
            if artifact_id is not None:
                pinned = self._revision_or_current(artifact_id, revision)
            elif revision is not None:
                raise ValidationError("a revision needs an artifact_id")
            now = self._now()
            reference = ExternalMemoryReference(
                id=self._ids("external_reference"),
                system=system,
                external_id=external_id,
                uri=uri,
                artifact_id=artifact_id,
                revision=None if pinned is None else pinned.revision,
                digest=None if pinned is None else pinned.digest,
                recorded_by=recorded_by,
                metadata_json=metadata_json,
                recorded_at=now,
                sequence=self.index.next_sequence(),
            )
            self.index.insert_external_reference(reference)
            self._record(
                reference.sequence,
                EntityKind.EXTERNAL_REFERENCE,
                reference.id,
                ChangeAction.CREATE,
                now,
                details={"system": system, "external_id": external_id},
            )
            return reference

    def get_external_reference(self, reference_id: str) -> ExternalMemoryReference:
        if not isinstance(reference_id, str):
            raise ValidationError(f"reference id must be a string, got {reference_id!r}")
        found = self.index.find_external_reference(reference_id)
        if found is None:
            raise ExternalReferenceNotFound(reference_id)
        return found

    def list_external_references(
        self, *, system: str | None = None, artifact_id: str | None = None
    ) -> list[ExternalMemoryReference]:
        return [
            ref
            for ref in self.index.list_external_references()
            if (system is None or ref.system == system)
            and (artifact_id is None or ref.artifact_id == artifact_id)
        ]

    # -- provided by KnowledgeRepository, of which this class is a part ------

    index: IndexBackend
    _ids: Any
    transaction: Callable[[], AbstractContextManager[None]]
    _now: Callable[[], datetime]
    _record: Callable[..., ChangeRecord]
    _revision_or_current: Callable[[str, int | None], ArtifactRevision]
