"""docs/contract.md, the code, the schemas, asyncapi.yaml and the vectors say the same thing.

The document's table of numbers (§1) and its table of reason codes (§12) are parsed and each
row is checked against every place that holds the same fact; a change in any one place alone
fails here. (The vectors' own content is checked in ``test_vectors.py``.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from services.core.messages import SCHEMA_VERSION
from services.core.reasons import Reason
from services.core.types import PSEUDONYM_VALUE_PATTERN, SIGNAL_ID_PATTERN, SIGNATURE_VALUE_PATTERN
from services.correlator import checks, engine
from services.platform.settings import Settings
from services.platform.topics import CONTRACT_PARTITIONS
from services.producer import keys, nir, sdk, seal
from services.producer.pseudonym import PREFIX

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "contract.md"
SCHEMAS = REPO / "schemas"
VECTORS = SCHEMAS / "vectors"
DRAFT_URI = "https://json-schema.org/draft/{}/schema"


def _section(title_start: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    m = re.search(rf"^## {re.escape(title_start)}.*?$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, f"docs/contract.md has no section '## {title_start}'"
    return m.group(1)


def _table(section: str) -> list[list[str]]:
    """The rows of the first Markdown table of ``section`` (header and rule excluded)."""
    lines = section.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), len(lines))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break  # the first table ends at its first other line
        rows.append(line)
    assert len(rows) > 2, "no table"
    return [[cell.strip() for cell in row.strip().strip("|").split("|")] for row in rows[2:]]


def _code(cell: str) -> str:
    return cell.strip().strip("`")


def numbers() -> dict[str, str]:
    return {name: _code(value) for name, value, *_ in _table(_section("1. Numbers"))}


def _int(name: str) -> int:
    return int(numbers()[name])


def _asyncapi() -> Any:
    return yaml.safe_load((SCHEMAS / "asyncapi.yaml").read_text(encoding="utf-8"))


def _schema(name: str) -> Any:
    return json.loads((SCHEMAS / f"{name}.schema.json").read_text(encoding="utf-8"))


def _vectors(name: str) -> Any:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


def _b64_chars(n_bytes: int) -> int:
    return (4 * n_bytes + 2) // 3


def _pattern_length(pattern: str) -> int:
    m = re.fullmatch(r"\^\[[^\]]+\]\{(\d+)\}\$", pattern)
    assert m, pattern
    return int(m.group(1))


def test_the_numbers_table_lists_exactly_these_rows() -> None:
    assert set(numbers()) == {
        "`schema_version`", "JSON Schema draft", "message size limit (bytes)", "record batch limit (bytes)",
        "partitions per signal topic", "partitions of the consent topic", "NIR length",
        "exchange key length (bytes)", "sealing key length (bytes)", "pseudonym length (characters)",
        "signal id length (characters)", "signature length (characters)", "nonce size (bytes)",
        "binding size (bytes)", "GCM tag size (bytes)",
    }


def test_schema_version() -> None:
    version = numbers()["`schema_version`"]
    assert version == SCHEMA_VERSION
    assert _schema("common")["$defs"]["schema_version"]["const"] == version
    assert f'"schema_version":"{version}"' in _vectors("signals.json")["cases"][0]["wire_text"]


def test_schema_draft() -> None:
    draft = numbers()["JSON Schema draft"]
    for path in SCHEMAS.glob("*.schema.json"):
        assert json.loads(path.read_text())["$schema"] == DRAFT_URI.format(draft), path.name
    for name, message in _asyncapi()["components"]["messages"].items():
        assert message["payload"]["schemaFormat"] == f"application/schema+json;version={draft}", name


def test_message_size_limit() -> None:
    limit = _int("message size limit (bytes)")
    assert limit == checks.MAX_MESSAGE_BYTES
    messages = _asyncapi()["components"]["messages"]
    assert messages["signal"]["x-max-message-bytes"] == limit
    assert messages["consent"]["x-max-message-bytes"] == limit
    assert f"au plus {limit} octets" in _asyncapi()["info"]["description"]
    sizes = {c["name"]: len(c["records"][0]["value_text"].encode())
             for c in _vectors("bad_messages.json")["cases"] if "value_text" in c["records"][0]}
    assert sizes["accepted_at_size_limit"] == limit
    assert sizes["message_trop_volumineux"] == limit + 1
    assert f"at most {limit} bytes" in _section("9. The Kafka record")


def test_record_batch_limit() -> None:
    limit = _int("record batch limit (bytes)")
    assert limit == sdk.MAX_BATCH_BYTES
    channels = _asyncapi()["channels"]
    for channel in ("signals", "consents", "reveals"):  # what a fund writes
        assert channels[channel]["bindings"]["kafka"]["topicConfiguration"]["max.message.bytes"] == limit, channel
    assert f"{limit} octets sur les topics" in _asyncapi()["info"]["description"]
    assert f"at most {limit} bytes" in _section("9. The Kafka record")
    # a batch holds many messages: the per-message limit is below the batch limit
    assert _int("message size limit (bytes)") < limit


def test_partitions() -> None:
    signals = _int("partitions per signal topic")
    consents = _int("partitions of the consent topic")
    channels = _asyncapi()["channels"]
    assert channels["signals"]["bindings"]["kafka"]["partitions"] == signals
    assert channels["consents"]["bindings"]["kafka"]["partitions"] == consents
    # co-partitioned: one worker partition per person; the worker's count is read from asyncapi.yaml
    assert Settings().partitions == CONTRACT_PARTITIONS == signals == consents
    assert checks.Checker.__init__.__defaults__ == (signals,)
    assert engine.Engine.__init__.__kwdefaults__["partitions"] == signals
    assert _vectors("signals.json")["partitions"] == signals
    assert _vectors("bad_messages.json")["partitions"] == signals
    assert f"% {signals}`" in _section("9. The Kafka record")


def test_nir_and_key_lengths() -> None:
    assert _int("NIR length") == nir.NIR_LENGTH
    assert all(len(c["normalised"]) == _int("NIR length") for c in _vectors("nir.json")["cases"] if "normalised" in c)
    assert keys.SECRET_BYTES == _int("exchange key length (bytes)") == _int("sealing key length (bytes)")
    k = _vectors("keys.json")
    assert {len(bytes.fromhex(e["key_hex"])) for e in k["exchange_keys"]} == {_int("exchange key length (bytes)")}
    assert {len(bytes.fromhex(e["key_hex"])) for e in k["sealing_keys"]} == {_int("sealing key length (bytes)")}


def test_value_lengths() -> None:
    common = _schema("common")["$defs"]
    pseudonym = _int("pseudonym length (characters)")
    assert pseudonym == _b64_chars(32)  # HMAC-SHA256
    assert _pattern_length(PSEUDONYM_VALUE_PATTERN) == pseudonym
    assert _pattern_length(common["pseudonym"]["properties"]["value"]["pattern"]) == pseudonym
    assert {len(c["pseudonym"]["value"]) for c in _vectors("pseudonym.json")["cases"]} == {pseudonym}
    assert len(PREFIX) + _int("NIR length") == 42 == _vectors("pseudonym.json")["cases"][0]["hmac_input_length"]

    signal_id = _int("signal id length (characters)")
    assert _pattern_length(SIGNAL_ID_PATTERN) == signal_id == _pattern_length(common["signal_id"]["pattern"])
    assert {len(c["signal_id"]) for c in _vectors("signal_id.json")["cases"]} == {signal_id}

    signature = _int("signature length (characters)")
    assert signature == _b64_chars(64)  # Ed25519
    assert _pattern_length(SIGNATURE_VALUE_PATTERN) == signature
    assert _pattern_length(common["signature"]["properties"]["value"]["pattern"]) == signature
    assert {len(c["signature"]["value"]) for c in _vectors("signature.json")["cases"]} == {signature}


def test_seal_sizes() -> None:
    nonce, binding, tag = _int("nonce size (bytes)"), _int("binding size (bytes)"), _int("GCM tag size (bytes)")
    assert (nonce, binding) == (seal.NONCE_BYTES, seal.BINDING_BYTES)
    for case in _vectors("sealed_ref.json")["cases"]:
        assert len(bytes.fromhex(case["nonce_hex"])) == nonce
        assert len(bytes.fromhex(case["binding_hex"])) == binding
        assert len(bytes.fromhex(case["ciphertext_and_tag_hex"])) == binding + len(case["reference"]) + tag
    # the documented value sizes fit the schema's pattern of a sealed value
    low, high = (int(x) for x in re.search(r"\{(\d+),(\d+)\}", _schema("common")["$defs"]["sealed_ref"]
                                          ["properties"]["value"]["pattern"]).groups())  # type: ignore[union-attr]
    assert low <= _b64_chars(nonce + binding + 2 + tag) and _b64_chars(nonce + binding + 64 + tag) <= high
    assert f"{nonce + binding + 2 + tag}-{nonce + binding + 64 + tag} bytes" in _section("6. Sealed reference")


# ------------------------------------------------------------------------------ reason codes
def reason_rows() -> list[list[str]]:
    return _table(_section("12. Reason codes"))


def test_reason_table_is_the_code_and_the_schemas() -> None:
    rows = reason_rows()
    documented = [_code(r[0]) for r in rows]
    assert len(documented) == len(set(documented)), "a code twice in the table"
    assert set(documented) == {r.value for r in Reason}
    labels = {_code(r[0]): r[1] for r in rows}
    for reason in Reason:
        assert labels[reason.value] == reason.label, reason
    enum = _schema("common")["$defs"]["reason"]["enum"]
    assert enum == [r.value for r in Reason]
    # the receipt and the dead letter take their reasons from that enumeration
    for name in ("receipt", "deadletter"):
        assert "common.schema.json#/$defs/reason" in json.dumps(_schema(name)), name


def _codes_in(*paths: Path) -> set[str]:
    found: set[str] = set()
    for path in paths:
        found |= {Reason[name].value for name in re.findall(r"Reason\.([A-Z_]+)", path.read_text())}
    return found


def test_who_decides_each_reason() -> None:
    decided = {_code(r[0]): {x.strip() for x in r[3].split(",")} for r in reason_rows()}
    assert all(d and d <= {"fonds", "échange", "service"} for d in decided.values()), decided
    # the pseudonymisation service's refusals (scheme v2), bad requests aside
    service = _codes_in(REPO / "services" / "pseudonymiser" / "service.py") - {Reason.SCHEMA_INVALIDE.value}
    assert service and all("service" in decided[code] for code in service), service
    correlator = _codes_in(*(REPO / "services" / "correlator").glob("*.py"), REPO / "services" / "core" / "policy.py")
    for code in correlator:
        assert "échange" in decided[code], f"{code} is decided by the correlator"
    producer = _codes_in(REPO / "services" / "producer" / "nir.py", REPO / "services" / "producer" / "extract.py")
    sdk_text = (REPO / "services" / "producer" / "sdk.py").read_text()
    producer |= {Reason[n].value for n in re.findall(r"Rejected\(Reason\.([A-Z_]+)", sdk_text)}
    producer.discard(Reason.SCHEMA_INVALIDE.value)  # the SDK's guard against its own bugs
    for code in producer:
        assert "fonds" in decided[code], f"{code} is decided by the SDK/CLI"
    # a code decided only at the fund never reaches a receipt: no vector promises one
    promised = {r["expect"].get("reason") for c in _vectors("bad_messages.json")["cases"] for r in c["records"]}
    for code in promised - {None}:
        assert "échange" in decided[code], code


def test_topics_named_in_the_document_exist() -> None:
    doc = DOC.read_text(encoding="utf-8")
    addresses = {ch["address"].replace("{fund}", "<fund>") for ch in _asyncapi()["channels"].values()}
    named = set(re.findall(r"`(help\.[a-z<>.]+\.v1)`", doc))
    named = {re.sub(r"\.(caf|cpam|urssaf|carsat|msa|F|G)\.", ".<fund>.", n) for n in named}
    assert named <= addresses, named - addresses
    assert engine.REPARTITION_TOPIC in doc


# ------------------------------------------------------------------------------ §12 free text, check order
def _subsection(section: str, title: str) -> str:
    m = re.search(rf"^### {re.escape(title)}.*?$(.*?)(?=^### |\Z)", section, re.M | re.S)
    assert m, f"§12 has no subsection '### {title}'"
    return m.group(1)


def test_free_text_rule_is_the_sdk_rule() -> None:
    text = _subsection(_section("12. Reason codes"), "Free text")
    rows = _table(text)
    assert f"longer than {sdk.MAX_FIELD} characters" in rows[0][1]
    documented = re.search(r"`(\[A-Za-z\][^`]+)`", rows[2][1])
    assert documented, "the word rule's regular expression"
    words = re.compile(documented.group(1))
    # on printable ASCII (anything else is refused by row 2 first) the documented expression
    # finds words exactly where the SDK does
    samples = ["Dupont Jean", "ab,cd", "A B C", "HELP 2026", "DOS-2026-00042", "ab  cd", "ab;'cd", "a b",
               "ab1 cd", "ab cd1", "x-ab:cd", "ab!?\"cd", "ab-cd", "ab.cd", "ab/cd", "ab_cd", "2a 2b", "aB Cd"]
    for sample in samples:
        assert bool(words.search(sample)) == sdk.is_free_text(sample), sample
    order = re.search(r"Fields are tested in this order[^:]*:(.*?);", text, re.S)
    assert order, "the field order"
    assert re.findall(r"`([a-z_]+)`", order.group(1)) == list(sdk._FIELDS)


def test_exchange_order_puts_the_dates_between_redelivery_and_doublon() -> None:
    rows = _table(_subsection(_section("12. Reason codes"), "Order of the checks"))
    checks_in_doc = [r[1] for r in rows]
    at = {key: next(i for i, c in enumerate(checks_in_doc) if c.startswith(key))
          for key in ("§8", "redelivery", "dates", "this `signal_id` not already", "no objection")}
    assert at["§8"] < at["redelivery"] < at["dates"] < at["this `signal_id` not already"] < at["no objection"]
    source = (REPO / "services" / "correlator" / "engine.py").read_text()
    body = source[source.index("def _signal("):source.index("def _situation(")]
    marks = ["self._policy(", "seen_source(", "signal_dates(", "Reason.DOUBLON", "state.opposed"]
    positions = [body.index(m) for m in marks]
    assert positions == sorted(positions), "the engine's order changed: update contract.md §12"


def test_files_document_their_limits() -> None:
    from services.producer import extract

    files = (REPO / "docs" / "files.md").read_text(encoding="utf-8")
    assert f"at most **{extract.MAX_LINE_BYTES} bytes** per line" in files
    assert f"at most {2 * sdk.MAX_FIELD} characters, printable ASCII" in files  # consent.py: finalites
    for column in (*extract.REQUIRED, *extract.OPTIONAL):
        assert f"`{column}`" in files, column


def test_sealed_digest_example_is_the_vector() -> None:
    first = _vectors("sealed_ref.json")["cases"][0]
    text = _section("10. The other messages")
    assert first["sealed_digest_sha256_hex"] in text and first["sealed_digest"] in text
    assert first["sealed_ref"]["value"].startswith(text.split("value `")[1].split("…")[0])
