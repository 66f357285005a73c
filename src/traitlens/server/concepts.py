"""Concepts made from uploaded sample images, kept in memory under random ids (explained as `concept:<id>`)."""

from __future__ import annotations

import logging
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass

from traitlens.explain import Concept
from traitlens.server._schemas import ConceptOut

__all__ = ["ConceptStore", "StoredConcept", "concept_class"]

log = logging.getLogger(__name__)


def concept_class() -> type[Concept] | None:
    """`traitlens.explain.Concept` when it can be built from images, else None (concept endpoints answer 501)."""
    return Concept if hasattr(Concept, "from_images") else None


@dataclass
class StoredConcept:
    """A concept with its id and the served model it was computed with (it only fits that model)."""

    id: str
    model: str
    concept: Concept

    def describe(self) -> ConceptOut:
        return ConceptOut(id=self.id, name=self.concept.name, model=self.model,
                          n_images=int(getattr(self.concept, "n_images", 0)),
                          dim=int(self.concept.vector.numel()))


class ConceptStore:
    """Concepts in memory under random ids; the oldest is dropped beyond `capacity`. Thread-safe."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, StoredConcept] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, model: str, concept: Concept) -> StoredConcept:
        """Store `concept` (computed with served model `model`) under a new id."""
        item = StoredConcept(secrets.token_hex(6), model, concept)
        with self._lock:
            self._items[item.id] = item
            while len(self._items) > self.capacity:
                old = self._items.popitem(last=False)[1]
                log.info("dropping concept %s (%s): more than %d stored", old.id, old.concept.name, self.capacity)
        return item

    def get(self, concept_id: str) -> StoredConcept | None:
        with self._lock:
            return self._items.get(concept_id)

    def remove(self, concept_id: str) -> bool:
        """Forget a concept; False when the id is unknown."""
        with self._lock:
            return self._items.pop(concept_id, None) is not None

    def all(self) -> list[StoredConcept]:
        """The stored concepts, oldest first."""
        with self._lock:
            return list(self._items.values())
