"""One valid example of every contract message (values are well-formed, not meaningful)."""

from __future__ import annotations

from typing import Any

PSEUDO = {"key_id": "xk-20261123-a1b2", "value": "Qm9uam91ciBsZXMgY2Fpc3NlcyBkZSBzw6ljdXJpdMOp"[:43]}
SEALED = {"key_id": "caf-seal-20261123-c3d4", "value": "bm9uY2Utbm9uY2UtY2lwaGVydGV4dC10YWctdGFnLXRhZy10YWc"}
SIG = {"key_id": "caf-sig-20261123-e5f6", "alg": "Ed25519", "value": "A" * 86}
SOURCE = {"topic": "help.signals.caf.v1", "partition": 3, "offset": 1234}

EXAMPLES: dict[str, list[dict[str, Any]]] = {
    "signal": [
        {
            "signal_id": "0123456789abcdef0123456789abcdef",
            "schema_version": "1.0",
            "fund": "caf",
            "emitter": "caf-35",
            "category": "impaye_loyer",
            "observed_on": "2026-11-05",
            "emitted_at": "2026-11-06T02:14:07.123456Z",
            "territory": "35",
            "pseudonym": PSEUDO,
            "sealed_ref": SEALED,
            "legal_basis": {"code": "L115-2-1", "conditions": []},
            "purpose": "acces_aux_droits",
            "signature": SIG,
        },
        {
            "signal_id": "fedcba9876543210fedcba9876543210",
            "schema_version": "1.0",
            "fund": "carsat",
            "emitter": "carsat-ne",
            "category": "veuvage_pension_reversion",
            "observed_on": "2026-10-30",
            "emitted_at": "2026-11-06T02:14:07Z",
            "territory": "2A",
            "pseudonym": PSEUDO,
            "sealed_ref": SEALED,
            "legal_basis": {"code": "consentement", "consent_ref": "HELP-2026-000123"},
            "purpose": "prevention_perte_autonomie",
            "signature": {**SIG, "key_id": "carsat-sig-1"},
        },
    ],
    "sealed_signal": [
        {
            "signal_id": "0123456789abcdef0123456789abcdef", "schema_version": "1.0", "fund": "caf",
            "emitter": "caf-35", "emitted_at": "2026-11-06T02:14:07.123456Z", "pseudonym": PSEUDO,
            "legal_basis": {"code": "L115-2-1", "conditions": []}, "purpose": "acces_aux_droits",
            "sealed": {"alg": "A256GCM", "subject": "0f" * 16, "epoch": 1, "value": "A" * 200},
            "signature": SIG,
        },
        {
            "signal_id": "fedcba9876543210fedcba9876543210", "schema_version": "1.0", "fund": "carsat",
            "emitter": "carsat-ne", "emitted_at": "2026-11-06T02:14:07Z", "pseudonym": PSEUDO,
            "pseudonym_previous": {**PSEUDO, "key_id": "xk-20251123-a1b2"},
            "legal_basis": {"code": "consentement", "consent_ref": "HELP-2026-000123"},
            "purpose": "prevention_perte_autonomie",
            "sealed": {"alg": "A256GCM", "subject": "a0" * 16, "epoch": 4_294_967_295, "value": "-_" * 150},
            "signature": SIG,
        },
    ],
    "receipt": [
        {"schema_version": "1.0", "receipt_id": "a" * 32, "fund": "caf", "signal_id": "b" * 32,
         "status": "accepte", "reason": None, "source": SOURCE, "processed_at": "2026-11-06T02:14:08Z"},
        {"schema_version": "1.0", "receipt_id": "c" * 32, "fund": "cpam", "signal_id": None,
         "status": "rejete", "reason": "signature_invalide", "source": SOURCE,
         "processed_at": "2026-11-06T02:14:08.5Z"},
    ],
    "situation": [
        {
            "schema_version": "1.0", "event_id": "d" * 32, "situation_id": "e" * 32, "version": 2,
            "kind": "mise_a_jour", "occurred_at": "2026-11-06T02:14:09Z", "territory": "35",
            "pseudonym": PSEUDO, "funds": ["caf", "urssaf"],
            "categories": [
                {"code": "impaye_loyer", "fund": "caf", "purposes": ["acces_aux_droits"],
                 "visible_to": ["caf", "cpam", "urssaf"]},
                {"code": "impaye_cotisations", "fund": "urssaf", "purposes": ["acces_aux_droits"],
                 "visible_to": ["urssaf", "caf"]},
            ],
            "purposes": ["acces_aux_droits"], "priority": "rouge",
            "rules": ["situation_partagee", "help_travailleur_independant"],
            "first_signal_on": "2026-10-01", "last_signal_on": "2026-11-05",
            "refs": [{"fund": "caf", "sealed_ref": SEALED}],
        }
    ],
    "sealed_situation": [
        {"schema_version": "1.0", "event_id": "d" * 32, "situation_id": "e" * 32, "version": 2,
         "sealed": {"alg": "A256GCM", "value": "SFhTMQ" + "A/+" * 40 + "Ag=="}}
    ],
    "followup": [
        {"schema_version": "1.0", "event_id": "f" * 32, "situation_id": "e" * 32, "territory": "35",
         "fund": "caf", "action": "fsl", "outcome": "accorde", "recorded_at": "2026-11-20T14:00:00Z",
         "recorded_by": "agent.caf-35.0042"}
    ],
    "sealed_followup": [
        {"schema_version": "1.0", "event_id": "f" * 32, "situation_id": "e" * 32, "territory": "35",
         "fund": "caf", "recorded_at": "2026-11-20T14:00:00Z", "recorded_by": "agent.caf-35.0042",
         "sealed": {"alg": "A256GCM", "value": "A" * 60}}
    ],
    "consent": [
        {"schema_version": "1.0", "event_id": "1" * 32, "kind": "consentement_donne", "fund": "urssaf",
         "emitter": "urssaf-ca", "pseudonym": PSEUDO, "purposes": ["acces_aux_droits"],
         "consent_ref": "HELP-2026-000123", "effective_at": "2026-11-01T09:00:00Z", "signature": SIG}
    ],
    "reveal": [
        {"schema_version": "1.0", "event_id": "3" * 32, "fund": "caf", "emitter": "caf-35",
         "actor": "agent.caf-35.0042", "purpose": "acces_aux_droits", "case_number": "35-2026-11-0042",
         "sealed_digest": "B" * 43, "revealed_at": "2026-11-20T14:05:00.123456Z", "signature": SIG},
        {"schema_version": "1.0", "event_id": "4" * 32, "fund": "msa", "emitter": "msa-2a",
         "actor": "agent.msa-2a.7", "purpose": "prevention_perte_autonomie", "case_number": None,
         "sealed_digest": "-" * 43, "revealed_at": "2026-11-20T14:05:00Z", "signature": SIG},
    ],
    "deadletter": [
        {"schema_version": "1.0", "deadletter_id": "2" * 32, "source": SOURCE, "fund": None, "signal_id": None,
         "reason": "json_invalide", "detail": "/:json_syntax;raw_withheld", "raw": "", "raw_size": 10,
         "raw_sha256": "a" * 64, "envelope": None, "received_at": "2026-11-06T02:14:08Z"},
        {"schema_version": "1.0", "deadletter_id": "5" * 32, "source": SOURCE, "fund": "caf",
         "signal_id": "0" * 32, "reason": "doublon", "detail": "/signal_id:already_accepted;raw_sealed",
         "raw": "SFhTMQ==", "raw_size": 812, "raw_sha256": "0123456789abcdef" * 4,
         "envelope": {"schema_version": "1.0", "fund": "caf", "emitter": "caf-35",
                      "emitted_at": "2026-11-06T02:14:08.5Z"},
         "received_at": "2026-11-06T02:14:09Z"},
        {"schema_version": "1.0", "deadletter_id": "6" * 32, "source": SOURCE, "fund": "caf",
         "signal_id": None, "reason": "version_schema_inconnue", "detail": "/schema_version:unsupported;raw_withheld",
         "raw": "", "raw_size": 40, "raw_sha256": "f" * 64,
         "envelope": {"schema_version": "2.0", "fund": None, "emitter": None, "emitted_at": None},
         "received_at": "2026-11-06T02:14:09Z"}
    ],
}
