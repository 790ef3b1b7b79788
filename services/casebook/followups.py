"""Recording a fund's follow-up ("suite donnée"), from the CLI or the web form.

The check (the case exists, the fund is involved, the action is one of that fund's suites
in the taxonomy, the outcome is known) comes first; then the follow-up row and an outbox
row are written in ONE transaction; then the outbox is published on ``help.followups.v1``.
If the broker is away the follow-up is kept and published later (by the next record, by
``help-exchange casebook outbox``, or by the running sink) — nothing is lost, and since
consumers upsert by ``event_id`` nothing counts twice.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import secrets
import uuid

import sqlalchemy as sa
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from services.casebook import store
from services.casebook.model import Situation, check_case_number, check_fund
from services.core.messages import FollowupEvent
from services.core.taxonomy import Taxonomy
from services.core.types import ACTOR_PATTERN, Outcome
from services.errors import InputError
from services.platform import kafka
from services.platform.settings import Settings
from services.platform.topics import FOLLOWUPS_TOPIC

log = logging.getLogger("help_exchange.casebook.followups")
_ACTOR = re.compile(ACTOR_PATTERN)


def check_outcome(text: str) -> Outcome:
    try:
        return Outcome(text)
    except ValueError:
        raise InputError(f"issue inconnue : {text!r}",
                         "choisissez parmi " + ", ".join(o.value for o in Outcome)) from None


def check_action(taxonomy: Taxonomy, fund: str, action: str) -> None:
    codes = {a.code for a in taxonomy.actions_of(check_fund(fund))}
    if action in codes:
        return
    owners = [f.value for f, actions in taxonomy.suites.items() if any(a.code == action for a in actions)]
    if owners:
        raise InputError(f"la suite {action!r} relève de {', '.join(owners)}, pas de {fund}",
                         f"choisissez une suite de {fund} : " + ", ".join(sorted(codes)))
    raise InputError(f"suite inconnue : {action!r}", f"suites de {fund} : " + ", ".join(sorted(codes)))


def validate_followup(taxonomy: Taxonomy, situation: Situation | None, *, case_number: str,
                      fund: str, action: str, outcome: str, user: str) -> tuple[Situation, Outcome]:
    check_case_number(case_number)
    if situation is None:
        raise InputError(f"dossier inconnu : {case_number}", "vérifiez le numéro sur la liste du mois")
    f = check_fund(fund)
    if f.value not in situation.funds:
        raise InputError(f"l'organisme {f.value} n'est pas concerné par le dossier {case_number}",
                         "organismes concernés : " + ", ".join(situation.funds))
    check_action(taxonomy, f.value, action)
    result = check_outcome(outcome)
    if not _ACTOR.fullmatch(user or ""):
        raise InputError(f"identifiant d'utilisateur invalide : {user!r}",
                         "un identifiant sans nom, par exemple agent.caf-35")
    return situation, result


def record_followup(engine: sa.Engine, taxonomy: Taxonomy, *, case_number: str, fund: str, action: str,
                    outcome: str, user: str, now: dt.datetime | None = None,
                    territory: str | None = None) -> FollowupEvent:
    """Check, then write the follow-up and its outbox row in one transaction.

    ``territory``, when given, must be the case's (the web view passes the user's)."""
    now = now or dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        situation = store.situation_by_case(conn, check_case_number(case_number))
        if situation is not None and territory is not None and situation.territory != territory:
            situation = None
        sit, result = validate_followup(taxonomy, situation, case_number=case_number, fund=fund,
                                        action=action, outcome=outcome, user=user)
        event = FollowupEvent(
            schema_version="1.0", event_id=uuid.uuid4().hex, situation_id=sit.situation_id,
            territory=sit.territory, fund=check_fund(fund), action=action, outcome=result,
            recorded_at=now, recorded_by=user,
        )
        store.apply_followups(conn, [event])
        store.add_to_outbox(conn, FOLLOWUPS_TOPIC, sit.situation_id, event, now)
    return event


async def publish_outbox(engine: sa.Engine, producer: AIOKafkaProducer) -> int:
    """Publish what waits in the outbox; returns how many went out. Broker errors keep them.

    The rows are claimed first (``store.claim_outbox``): the sink's timer and a CLI flush
    running together send each row once, not both. A sender killed after sending and before
    marking leaves its claim to expire (``store.OUTBOX_LEASE``): the row is then sent again,
    under the same event id, which the readers take idempotently."""
    claimant = secrets.token_hex(16)
    with engine.begin() as conn:
        pending = store.claim_outbox(conn, claimant, dt.datetime.now(dt.UTC))
    if not pending:
        return 0
    done: list[int] = []
    try:
        for row_id, topic, key, payload in pending:
            await producer.send_and_wait(topic, payload.encode(), key=key.encode())
            done.append(row_id)
    except KafkaError as exc:
        log.warning("follow-up outbox: %d kept for later (%s)", len(pending) - len(done), exc)
    finally:
        with engine.begin() as conn:
            if done:
                store.mark_published(conn, done, dt.datetime.now(dt.UTC))
            store.release_outbox(conn, claimant)
    return len(done)


async def flush_outbox(settings: Settings, engine: sa.Engine, bootstrap: str) -> int:
    """Publish the outbox with a short-lived producer (the CLI's way)."""
    producer = kafka.producer(settings, bootstrap)
    with kafka.kafka_errors(f"cannot reach Kafka at {bootstrap}: {{error}}",
                            "the follow-up is kept in the outbox and will be published later", kafka.UNREACHABLE):
        await producer.start()
    try:
        return await publish_outbox(engine, producer)
    finally:
        await producer.stop()
