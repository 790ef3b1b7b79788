"""What the casebook's commands get from the composition root (:mod:`services.app.bootstrap`):
the audit sink of its accesses and the pages others mount in its web view."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.casebook.audit import AuditSinkFactory
    from services.casebook.web import WebExtension


@dataclass(frozen=True)
class CasebookWiring:
    audit_sink: AuditSinkFactory
    web_extensions: tuple[WebExtension, ...] = ()
