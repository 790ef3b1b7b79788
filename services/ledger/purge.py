"""Retention: ``help-exchange purge`` removes what is kept longer than its period.

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

What a run does, in this order (so that a crash anywhere loses nothing):

1. lists the situations past their period (``--dry-run`` stops here and prints counts);
2. sends the correlator an erasure command for each person (internal topic
   ``help-correlator-repartition``, header ``help-erase``, in the partition of the person's
   state) and waits for the broker's acknowledgements. The correlator forgets the person's
   signals and situation (so nothing purged comes back with the next signal) and publishes
   the tombstone (null value, key = situation id, header ``help-origin: purge``) on the
   compacted ``help.situations.v1``: compaction then drops the situation's events, and every
   consumer forgets it (the casebook sink deletes it; the audit sink enters a
   ``purge_conservation`` entry per case). The tombstone comes from the correlator, after
   its state is erased: a signal read meanwhile cannot publish a version after it;
3. deletes the situations and their follow-ups from the casebook (and the sign-in log's rows
   past their period), drops the erasure markers
   older than the closed cases' period (:func:`services.casebook.store.expire_markers`), and
   appends ONE ledger
   entry ``purge_conservation`` with the count, dated at the time of the run (``--as-of``
   only moves the cut-off), in one transaction. Ledger entries are never purged: they hold
   no personal payload (docs/architecture.md, decision 8).

A crash anywhere leaves the casebook rows until a rerun, which sends the commands again (a
command is idempotent).
"""

from __future__ import annotations

import calendar
import datetime as dt
import uuid
from dataclasses import dataclass, field

import sqlalchemy as sa
import yaml

from services.casebook import store, tables
from services.casebook.model import Followup, Situation, closed_at, group_followups
from services.correlator.engine import H_ERASE, PARTITIONS, REPARTITION_SPEC, REPARTITION_TOPIC, erasure_command
from services.errors import BrokerError
from services.ledger.entries import Action, BaseLegale, Finalite, new_entry
from services.ledger.store import Ledger
from services.platform import kafka
from services.platform.db import scrub
from services.platform.settings import Settings
from services.platform.topics import ORIGIN_PURGE


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


async def send_erasures(settings: Settings, bootstrap: str, plan: PurgePlan) -> int:
    """Send the correlator an erasure command per person of the plan (see the module
    docstring); returns how many were acknowledged. Raises BrokerError before anything is
    deleted if the broker does not take them."""
    persons = sorted(set(plan.persons.values()))
    if not persons:
        return 0
    producer = kafka.producer(settings, bootstrap)
    try:
        await kafka.apply_topics(settings, bootstrap, [REPARTITION_SPEC])
        await producer.start()
        futures = []
        for key_id, value in persons:
            key, command, partition = erasure_command(key_id, value, PARTITIONS)
            futures.append(await producer.send(REPARTITION_TOPIC, command, key=key, partition=partition,
                                               headers=[(H_ERASE, ORIGIN_PURGE)]))
        for future in futures:
            await future
    except Exception as exc:  # aiokafka's errors and OSError alike: nothing was deleted yet
        raise BrokerError(f"could not send the purge's erasure commands: {exc!r}",
                          "nothing was deleted; start the broker and run the purge again") from exc
    finally:
        await producer.stop()
    return len(persons)


def apply_purge(engine: sa.Engine, ledger: Ledger, plan: PurgePlan, *,
                now: dt.datetime | None = None) -> int:
    """Delete the plan's situations and follow-ups and enter the run in the ledger, atomically.

    The entry is dated ``now`` (the time of the run), not the plan's ``as_of``."""
    ids = plan.situation_ids
    entry = new_entry(action=Action.PURGE_CONSERVATION, actor="retention",
                      purpose=Finalite.LIMITATION_CONSERVATION, legal_basis=BaseLegale.RGPD_6_1_C,
                      time=now or dt.datetime.now(dt.UTC), entry_id=uuid.uuid4().hex, count=len(ids))
    with engine.begin() as conn:
        removed = store.apply_tombstones(conn, ids)
        if plan.sign_ins_before is not None:
            conn.execute(sa.delete(tables.sign_ins).where(tables.sign_ins.c.at < plan.sign_ins_before))
        if plan.markers_before is not None:
            store.expire_markers(conn, plan.markers_before)
        ledger.append([entry], connection=conn)
    scrub(engine)
    return removed
