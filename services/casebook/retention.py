"""Retention in the casebook: what is kept longer than its period, and its deletion.

Periods (environment variables ``HELP_RETENTION_*``, months; defaults from docs/domain.md
(retention), the Dutch early-signalling rules), fields ``retention_*`` of
:class:`services.platform.settings.Settings` where each is explained:

``HELP_RETENTION_SIGNALS_MONTHS`` (6)
    Signals never correlated (kept only in the correlator's window, checked against it).
``HELP_RETENTION_SITUATIONS_MONTHS`` (12)
    Situations, after their last activity, unless closed.
``HELP_RETENTION_CLOSED_MONTHS`` (18)
    Closed cases, after closing. A case that only went quiet (no signal for
    ``HELP_CASEBOOK_CLOSE_AFTER_MONTHS``) is not "closed" in this sense: it follows the
    12-month rule.
``HELP_RETENTION_SIGN_INS_MONTHS`` (12)
    The web view's sign-in log (identifier, client address, outcome), after the attempt.

:func:`plan_purge` lists what is past its period (reads only); :func:`delete_expired`
deletes it in the caller's transaction. The run that sends the correlator its erasure
commands first and enters the purge in the ledger is ``help-exchange purge``
(:mod:`services.app.purge`).
"""

from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import dataclass, field

import sqlalchemy as sa
import yaml

from services.casebook import store, tables
from services.casebook.model import Followup, Situation, closed_at, group_followups
from services.platform.settings import Settings


def months_before(moment: dt.datetime, months: int) -> dt.datetime:
    """``moment`` minus whole months (day clamped to the month's last day)."""
    total = moment.year * 12 + moment.month - 1 - months
    year, month = divmod(total, 12)
    month += 1
    return moment.replace(year=year, month=month, day=min(moment.day, calendar.monthrange(year, month)[1]))


def last_activity(sit: Situation, followups: list[Followup]) -> dt.datetime:
    moments = [sit.updated_at, dt.datetime.combine(sit.last_signal_on, dt.time(), dt.UTC)]
    moments += [f.recorded_at for f in followups]
    return max(moments)


@dataclass
class PurgePlan:
    as_of: dt.datetime
    inactive: list[str] = field(default_factory=list)  # situation ids, 12-month rule
    closed: list[str] = field(default_factory=list)  # situation ids, 18-month rule
    followups: int = 0
    #: situation id -> (pseudonym key id, pseudonym value): whom the erasure commands name.
    persons: dict[str, tuple[str, str]] = field(default_factory=dict)
    window_days: int | None = None
    signals_months: int = 6
    sign_ins: int = 0  # rows of the web view's sign-in log past their period
    sign_ins_before: dt.datetime | None = None
    #: Erasure markers older than this are dropped (the closed cases' retention).
    markers_before: dt.datetime | None = None
    #: Persons of signals whose receipt never came (the ledger's ``ledger_signal_subjects``),
    #: read by the audit sink before this (the signals' period), or undated: counted and
    #: removed by ``help-exchange purge`` (:mod:`services.app.purge`).
    signal_subjects: int = 0
    signal_subjects_before: dt.datetime | None = None

    @property
    def cut_off(self) -> dt.date:
        """The date the retention periods count back from (``--as-of``), in every entry."""
        return self.as_of.date()

    @property
    def situation_ids(self) -> list[str]:
        return sorted(self.inactive + self.closed)

    def lines(self, *, dry_run: bool) -> list[str]:
        verb = "à supprimer" if dry_run else "supprimé(e)s"
        out = [f"Purge au {self.as_of:%Y-%m-%d %H:%M} UTC{' (simulation)' if dry_run else ''}",
               f"  situations sans activité depuis la durée de conservation : {len(self.inactive)} {verb}",
               f"  dossiers clôturés depuis la durée de conservation        : {len(self.closed)} {verb}",
               f"  suites données de ces dossiers                           : {self.followups} {verb}",
               f"  tentatives de connexion à la vue web (journal)            : {self.sign_ins} {verb}",
               f"  personnes de signalements restés sans accusé (journal)    : {self.signal_subjects} {verb}",
               f"  personnes effacées de l'état du corrélateur              : {len(set(self.persons.values()))}"
               + (" (à envoyer)" if dry_run else " (commandes envoyées)")]
        if self.window_days is not None:
            ok = self.window_days <= self.signals_months * 30
            out.append(f"  signalements non corrélés : conservés {self.window_days} jours au plus par "
                       f"le corrélateur (schemas/rules.yaml) — "
                       + ("sous" if ok else "AU-DELÀ de") + f" la limite de {self.signals_months} mois")
        return out


def plan_purge(engine: sa.Engine, settings: Settings, *, as_of: dt.datetime,
               rules_window_days: int | None = None) -> PurgePlan:
    """What a purge at ``as_of`` would remove (reads only), with the settings' retention periods
    and the casebook's ``casebook_close_after_months``."""
    plan = PurgePlan(as_of=as_of, window_days=rules_window_days,
                     signals_months=settings.retention_signals_months)
    inactive_before = months_before(as_of, settings.retention_situations_months)
    closed_before = months_before(as_of, settings.retention_closed_months)
    plan.markers_before = closed_before
    close_after_months = settings.casebook_close_after_months
    plan.sign_ins_before = months_before(as_of, settings.retention_sign_ins_months)
    plan.signal_subjects_before = months_before(as_of, settings.retention_signals_months)
    with engine.connect() as conn:
        situations = store.all_situations(conn)
        by_situation = group_followups(store.all_followups(conn))
        plan.sign_ins = int(conn.execute(sa.select(sa.func.count()).select_from(tables.sign_ins)
                                         .where(tables.sign_ins.c.at < plan.sign_ins_before)).scalar_one())
    for sit in situations:
        fus = by_situation.get(sit.situation_id, [])
        closing = closed_at(sit, fus, close_after_months=close_after_months, as_of=as_of)
        if closing is not None and closing[1] != "sans_nouveau_signal":
            if closing[0] < closed_before:
                plan.closed.append(sit.situation_id)
                plan.followups += len(fus)
        elif last_activity(sit, fus) < inactive_before:
            plan.inactive.append(sit.situation_id)
            plan.followups += len(fus)
    ids = plan.situation_ids
    with engine.connect() as conn:
        s = tables.situations
        for i in range(0, len(ids), 500):
            for sid, key_id, value in conn.execute(
                    sa.select(s.c.situation_id, s.c.pseudonym_key_id, s.c.pseudonym)
                    .where(s.c.situation_id.in_(ids[i:i + 500]))):
                plan.persons[sid] = (key_id, value)
    return plan


def correlation_window_days(settings: Settings) -> int | None:
    try:
        doc = yaml.safe_load((settings.schemas_dir / "rules.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    value = doc.get("fenetre_correlation_jours") if isinstance(doc, dict) else None
    return int(value) if isinstance(value, int) else None


def delete_expired(conn: sa.Connection, plan: PurgePlan) -> int:
    """Delete the plan's situations and follow-ups, the sign-in log's rows past their period
    and the erasure markers older than the closed cases' period, in ``conn``'s transaction;
    returns how many situations went."""
    removed = store.apply_tombstones(conn, plan.situation_ids)
    if plan.sign_ins_before is not None:
        conn.execute(sa.delete(tables.sign_ins).where(tables.sign_ins.c.at < plan.sign_ins_before))
    if plan.markers_before is not None:
        store.expire_markers(conn, plan.markers_before)
    return removed
