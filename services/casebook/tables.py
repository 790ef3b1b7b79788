"""The casebook's SQL tables (SQLAlchemy Core); migrated by services/platform/migrations.

Everything the monthly review needs, and nothing more: no NIR, no name, no clear file
reference ever reaches these tables (the pseudonym and the sealed references come as they
travel on the topics). Lists (funds, categories, rules, refs) are JSON columns: they are
always read whole with their situation, never queried inside.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

TZ = sa.DateTime(timezone=True)

situations = sa.Table(
    "casebook_situations",
    metadata,
    sa.Column("situation_id", sa.String(32), primary_key=True),
    # Short and stable: territory-year-month of opening-sequence, assigned once.
    sa.Column("case_number", sa.String(32), nullable=False, unique=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("territory", sa.String(3), nullable=False),
    sa.Column("pseudonym_key_id", sa.String(40), nullable=False),
    sa.Column("pseudonym", sa.String(43), nullable=False, index=True),
    sa.Column("priority", sa.String(8), nullable=False),
    # funds, categories, purposes, rules and sealed refs, always read together: one JSON
    # document per row is decoded once (five columns cost five decodes per row).
    sa.Column("detail", sa.JSON, nullable=False),
    sa.Column("first_signal_on", sa.Date, nullable=False),
    sa.Column("last_signal_on", sa.Date, nullable=False),
    # occurred_at of the earliest event seen (the opening) and of the latest version.
    sa.Column("opened_at", TZ, nullable=False),
    sa.Column("updated_at", TZ, nullable=False),
    # occurred_at of the latest "rouverte" event: earlier follow-ups do not close it again.
    sa.Column("reopened_at", TZ, nullable=True),
    sa.Index("ix_casebook_situations_territory_opened", "territory", "opened_at"),
)

case_sequences = sa.Table(
    "casebook_case_sequences",
    metadata,
    sa.Column("territory", sa.String(3), primary_key=True),
    sa.Column("year_month", sa.String(7), primary_key=True),
    sa.Column("last_value", sa.Integer, nullable=False),
)

followups = sa.Table(
    "casebook_followups",
    metadata,
    sa.Column("event_id", sa.String(32), primary_key=True),
    sa.Column("situation_id", sa.String(32), nullable=False, index=True),
    sa.Column("territory", sa.String(3), nullable=False),
    sa.Column("fund", sa.String(8), nullable=False),
    sa.Column("action", sa.String(48), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("recorded_at", TZ, nullable=False),
    sa.Column("recorded_by", sa.String(64), nullable=False),
    sa.Index("ix_casebook_followups_territory_recorded", "territory", "recorded_at"),
)

# An objection (or a withdrawn consent) erases what was stored and stops later replays of
# older events from bringing it back: situation events that occurred before
# ``effective_at`` for this pseudonym are ignored.
objections = sa.Table(
    "casebook_objections",
    metadata,
    sa.Column("pseudonym", sa.String(43), primary_key=True),
    sa.Column("effective_at", TZ, nullable=False),
)

erased_situations = sa.Table(
    "casebook_erased_situations",
    metadata,
    sa.Column("situation_id", sa.String(32), primary_key=True),
    sa.Column("erased_at", TZ, nullable=False),
)

# Each case's data key: a follow-up's detail goes on help.followups.v1 sealed under it, and
# the row is deleted in the transaction that erases the case (services/casebook/casekeys.py).
case_keys = sa.Table(
    "casebook_case_keys",
    metadata,
    sa.Column("situation_id", sa.String(32), primary_key=True),
    sa.Column("key", sa.LargeBinary(32), nullable=False),
    sa.Column("created_at", TZ, nullable=False),
)

# Follow-ups recorded here, waiting to be published on help.followups.v1.
outbox = sa.Table(
    "casebook_outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(32), nullable=False, unique=True),
    sa.Column("topic", sa.String(128), nullable=False),
    sa.Column("key", sa.String(64), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("created_at", TZ, nullable=False),
    sa.Column("published_at", TZ, nullable=True),
    # The sender sending the row now (a random token) and since when: a row is claimed by
    # one sender at a time (the sink's timer and a CLI flush may run together); a claim
    # older than the lease is a sender that died, and the row is taken again.
    sa.Column("claimed_by", sa.String(32), nullable=True),
    sa.Column("claimed_at", TZ, nullable=True),
)

# The default audit sink (see audit.py): who looked at or did what, for which purpose.
access_log = sa.Table(
    "casebook_access_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", TZ, nullable=False),
    sa.Column("user_id", sa.String(64), nullable=False),
    sa.Column("role", sa.String(24), nullable=False),
    sa.Column("fund", sa.String(8), nullable=True),
    sa.Column("action", sa.String(24), nullable=False),
    sa.Column("purpose", sa.String(64), nullable=False),
    sa.Column("case_number", sa.String(32), nullable=True),
    sa.Column("detail", sa.String(200), nullable=False, default=""),
)

# The monthly meetings (issue "what changed since last meeting"): when, where, who by fund.
# Participants are user ids (functions, never names), as the users file holds them.
meetings = sa.Table(
    "casebook_meetings",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("territory", sa.String(3), nullable=False),
    sa.Column("held_at", TZ, nullable=False),
    sa.Column("participants", sa.JSON, nullable=False),  # {"caf": ["agent.caf35", ...], ...}
    sa.Column("recorded_at", TZ, nullable=False),
    sa.Column("recorded_by", sa.String(64), nullable=False),
    sa.Index("ix_casebook_meetings_territory_held", "territory", "held_at"),
)

# Statistics as published, frozen: a month's release is computed once the month has ended,
# stored, and repeated unchanged afterwards (services/casebook/stats.py).
stats_releases = sa.Table(
    "casebook_stats_releases",
    metadata,
    sa.Column("scope", sa.String(8), primary_key=True),
    sa.Column("month", sa.String(7), primary_key=True),
    sa.Column("published_at", TZ, nullable=False),
    sa.Column("body", sa.JSON, nullable=False),
)

# The web view's server-side sessions (issue 17): the cookie holds a random token, this table
# its SHA-256 only. Logout deletes the row; a row idle or too old is refused and removed.
web_sessions = sa.Table(
    "casebook_web_sessions",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.String(64), nullable=False, index=True),
    sa.Column("csrf", sa.String(64), nullable=False),
    # set for an OpenID Connect sign-in: the role, fund and territory its claims mapped to
    sa.Column("role", sa.String(24), nullable=True),
    sa.Column("fund", sa.String(8), nullable=True),
    sa.Column("territory", sa.String(3), nullable=True),
    sa.Column("created_at", TZ, nullable=False),
    sa.Column("last_seen_at", TZ, nullable=False),
    # the one message to show on the next page ("Suite enregistrée."), then cleared
    sa.Column("flash", sa.String(200), nullable=True),
)

# One-time tokens of the follow-up forms: a submit consumes its token, a second submit of the
# same form finds none and records nothing.
form_tokens = sa.Table(
    "casebook_form_tokens",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("session_hash", sa.String(64), nullable=False, index=True),
    sa.Column("case_number", sa.String(32), nullable=False),
    sa.Column("created_at", TZ, nullable=False),
)

# Every sign-in attempt, its outcome and where it came from (read by auditors).
sign_ins = sa.Table(
    "casebook_sign_ins",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", TZ, nullable=False, index=True),
    sa.Column("user_id", sa.String(64), nullable=False),
    sa.Column("address", sa.String(64), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
)

# Failed sign-ins per account ("u:<id>") and per client address ("a:<address>"): the delay
# before the next attempt grows with them, then the key is locked for a while.
sign_in_failures = sa.Table(
    "casebook_sign_in_failures",
    metadata,
    sa.Column("key", sa.String(80), primary_key=True),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("last_failure_at", TZ, nullable=False),
    sa.Column("locked_until", TZ, nullable=True),
)
