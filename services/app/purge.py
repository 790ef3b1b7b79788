"""``help-exchange purge``: the retention run, across the casebook, the correlator and the ledger.

The periods (``HELP_RETENTION_*``) and what each covers: :mod:`services.casebook.retention`.

What a run does, in this order (so that a crash anywhere loses nothing):

1. lists the situations past their period (:func:`~services.casebook.retention.plan_purge`;
   ``--dry-run`` stops here and prints counts);
2. sends the correlator an erasure command for each person (:mod:`services.correlator.erasure`; internal topic
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
   older than the closed cases' period (:func:`services.casebook.store.expire_markers`), the
   audit sink's persons of signals whose receipt never came (``ledger_signal_subjects``,
   past the signals' period: :mod:`services.ledger.subjects`), and appends ONE ledger entry
   ``purge_conservation`` with the count, dated at the time of the run, its ``cut_off`` the
   ``--as-of`` date the periods count back from, in one transaction. Ledger entries are
   never purged: they hold no personal payload (docs/architecture.md, decision 8).

The erasure commands carry the time they were issued and the cut-off: the correlator
erases only what it received before (a command read again after a restart spares the
person's later signals), and its tombstones carry the cut-off to the per-case entries.

A crash anywhere leaves the casebook rows until a rerun, which sends the commands again (a
command is idempotent).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import TYPE_CHECKING

import click

from services.core.bounds import parse_day
from services.platform.cli import settings_from
from services.platform.settings import Settings

if TYPE_CHECKING:
    import sqlalchemy as sa

    from services.casebook.retention import PurgePlan
    from services.ledger.store import Ledger


async def send_erasures(settings: Settings, bootstrap: str, plan: PurgePlan) -> int:
    """Send the correlator an erasure command per person of the plan (step 2); returns how
    many were acknowledged. Raises BrokerError before anything is deleted if the broker does
    not take them."""
    from services.correlator import erasure  # the correlator's engine loads only when a purge runs

    return await erasure.send_erasures(settings, bootstrap, plan.persons.values(), cut_off=plan.cut_off)


def apply_purge(engine: sa.Engine, ledger: Ledger, plan: PurgePlan, *,
                now: dt.datetime | None = None) -> int:
    """Delete the plan's situations and follow-ups and enter the run in the ledger, atomically
    (step 3).

    The entry is dated ``now`` (the time of the run); its ``cut_off`` is the plan's
    ``as_of`` date."""
    from services.casebook.retention import delete_expired
    from services.ledger.entries import Action, LedgerLegalBasis, LedgerPurpose, new_entry
    from services.ledger.subjects import delete_stale_subjects
    from services.platform.db import scrub

    entry = new_entry(action=Action.PURGE_CONSERVATION, actor="retention",
                      purpose=LedgerPurpose.LIMITATION_CONSERVATION, legal_basis=LedgerLegalBasis.RGPD_6_1_C,
                      time=now or dt.datetime.now(dt.UTC), entry_id=uuid.uuid4().hex,
                      count=len(plan.situation_ids), cut_off=plan.cut_off)
    with engine.begin() as conn:
        removed = delete_expired(conn, plan)
        if plan.signal_subjects_before is not None:
            delete_stale_subjects(conn, plan.signal_subjects_before)
        ledger.append([entry], connection=conn)
    scrub(engine)
    return removed


def count_subjects(engine: sa.Engine, plan: PurgePlan) -> None:
    """The plan's count of the ledger's persons of signals without receipt (reads only)."""
    from services.ledger.subjects import count_stale_subjects

    if plan.signal_subjects_before is not None:
        with engine.connect() as conn:
            plan.signal_subjects = count_stale_subjects(conn, plan.signal_subjects_before)


def register(cli: click.Group) -> None:
    cli.add_command(purge)


@click.command("purge")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@click.option("--as-of", "as_of", default=None,
              help="Apply the periods as on this day (AAAA-MM-JJ, UTC midnight); default now.")
@click.pass_context
def purge(ctx: click.Context, dry_run: bool, as_of: str | None) -> None:
    """Apply the retention periods (HELP_RETENTION_*: 6 months for signals never correlated,
    12 after the last activity for situations, 18 after closing for closed cases).

    Sends the correlator an erasure command per person concerned (it forgets their signals
    and situation and publishes the tombstone on help.situations.v1: every consumer forgets
    it), deletes the situations and their follow-ups from the casebook and enters the run,
    with its counts and the time it ran, in the ledger. --as-of only moves the cut-off.
    """
    # The casebook's database and the ledger load only when a purge runs (the CLI starts faster).
    from services.casebook.retention import correlation_window_days, plan_purge
    from services.ledger.store import Ledger, ensure_ready
    from services.platform.broker import resolve_bootstrap
    from services.platform.db import make_engine

    settings = settings_from(ctx)
    if as_of is None:
        moment = dt.datetime.now(dt.UTC)
    else:
        moment = dt.datetime.combine(parse_day(as_of, what="--as-of"), dt.time(), dt.UTC)
    engine = make_engine(settings.database_url)
    try:
        ensure_ready(engine)  # every table migrated, an earlier ledger brought up to date
        plan = plan_purge(engine, settings, as_of=moment,
                          rules_window_days=correlation_window_days(settings))
        count_subjects(engine, plan)
        if not dry_run and plan.situation_ids:
            asyncio.run(send_erasures(settings, resolve_bootstrap(settings), plan))
        if not dry_run:
            ledger = Ledger(engine)
            apply_purge(engine, ledger, plan)
    finally:
        engine.dispose()
    for line in plan.lines(dry_run=dry_run):
        click.echo(line)
