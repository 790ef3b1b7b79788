"""Pure unit tests of the producer: NIR, pseudonym, seal, signal id, keys, builder, extract."""

from __future__ import annotations

import datetime as dt
import json
import random
import stat
from pathlib import Path

import pytest
import rfc8785
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from services.core.codec import canonical
from services.core.messages import Signal
from services.core.reasons import Reason
from services.core.registry import load_registry
from services.core.signing import verify
from services.core.types import Fund
from services.errors import CryptoError, InputError, Rejected
from services.platform.settings import Settings
from services.producer import nir as nirs
from services.producer.extract import Extract, ExtractFileError, Line, Rejection, RejectReport
from services.producer.keys import (
    init_exchange_key,
    init_fund_keys,
    load_exchange_key,
    load_fund_secrets,
    registry_path,
    retire_exchange_key,
)
from services.producer.pseudonym import pseudonym, pseudonym_value
from services.producer.sdk import SignalBuilder, SignalInput, parse_date, today_paris
from services.producer.seal import TOKEN_RE, Sealer, SignalIds, open_sealed, token
from tests.support.extracts import make_nir, nirs_in, write_csv, wrong_key
from tests.support.signalkeys import open_signal

RNG = random.Random(3)
TODAY = today_paris()  # the day the producer judges dates by (Europe/Paris), not UTC
RECENT = (TODAY - dt.timedelta(days=30)).isoformat()


@pytest.fixture
def keyed(offline_settings: Settings) -> Settings:
    init_fund_keys(offline_settings.key_dir, Fund.CAF)
    init_exchange_key(offline_settings.key_dir)
    return offline_settings


# --------------------------------------------------------------------------- NIR
def test_nir_normalises_separators_and_corsica() -> None:
    nir = make_nir(RNG, "2A")
    spaced = f"{nir[0]} {nir[1:3]} {nir[3:5]} {nir[5:7]}.{nir[7:10]}.{nir[10:13]} {nir[13:]}"
    assert nirs.normalise(spaced) == nir
    assert nirs.normalise(nir.lower()) == nir
    assert nirs.normalise(make_nir(RNG, "2B"))[5:7] == "2B"
    assert nirs.normalise("2 95 10 99 126 111 93") == "295109912611193"  # stdnum's example


@pytest.mark.parametrize("bad", ["", "123", "1850578006084", "18505780060843612", "1850X780060843",
                                 "2530 72C 073 004 43", "985057800608436"])
def test_nir_malformed(bad: str) -> None:
    with pytest.raises(Rejected) as exc:
        nirs.normalise(bad)
    assert exc.value.reason is Reason.NIR_INVALIDE


def test_nir_wrong_key_is_its_own_reason() -> None:
    for dept in ("35", "2A", "2B"):
        with pytest.raises(Rejected) as exc:
            nirs.normalise(wrong_key(make_nir(RNG, dept)))
        assert exc.value.reason is Reason.CLE_NIR_INVALIDE


def test_age_is_never_over_estimated() -> None:
    nir = "1" + "60" + "05" + "35" + "123456"
    nir += f"{97 - int(nir) % 97:02d}"
    assert nirs.age_on(nir, dt.date(2026, 6, 1)) == 66   # born May 1960: birthday passed
    assert nirs.age_on(nir, dt.date(2026, 5, 20)) == 65  # may not have come yet
    unknown_month = nir[:3] + "20" + nir[5:13]
    unknown_month += f"{97 - int(unknown_month) % 97:02d}"
    assert nirs.age_on(unknown_month, dt.date(2026, 11, 30)) == 65  # December assumed: birthday not yet


@given(st.text(max_size=80))
def test_mask_never_shows_more_than_three_characters(value: str) -> None:
    masked = nirs.mask(value)
    assert len(masked) <= 15
    assert sum(c != "*" for c in masked) <= 3


def test_mask_of_a_nir() -> None:
    assert nirs.mask("1 85 05 78 006 084 36") == "1************36"


# --------------------------------------------------------------------------- pseudonym, seal, ids
def test_pseudonym_is_keyed_deterministic_43_chars() -> None:
    k1, k2 = b"1" * 32, b"2" * 32
    nir = make_nir(RNG)
    v = pseudonym_value(k1, nir)
    assert len(v) == 43 and v == pseudonym_value(k1, nir) and v != pseudonym_value(k2, nir)
    assert pseudonym("xk-20260101-abcd", k1, nir) == {"key_id": "xk-20260101-abcd", "value": v}


def test_seal_opens_only_with_the_fund_key_and_binding() -> None:
    key = b"k" * 32
    sealer = Sealer(Fund.CAF, "caf-seal-20260101-abcd", key)
    p1 = {"key_id": "xk-1", "value": "A" * 43}
    p2 = {"key_id": "xk-1", "value": "B" * 43}
    sealed = sealer.seal("DOS-2026/001_a.b", p1)
    assert "DOS" not in sealed["value"]
    keys = {"caf-seal-20260101-abcd": key}
    assert open_sealed(Fund.CAF, keys, sealed["key_id"], sealed["value"]) == "DOS-2026/001_a.b"
    assert open_sealed(Fund.CAF, keys, sealed["key_id"], sealed["value"], pseudonym=p1) == "DOS-2026/001_a.b"
    with pytest.raises(CryptoError):  # moved onto another person's signal
        open_sealed(Fund.CAF, keys, sealed["key_id"], sealed["value"], pseudonym=p2)
    with pytest.raises(CryptoError):  # claimed by another fund
        open_sealed(Fund.CPAM, keys, sealed["key_id"], sealed["value"])
    tampered = sealed["value"][:-2] + ("AA" if sealed["value"][-2:] != "AA" else "BB")
    with pytest.raises(CryptoError):
        open_sealed(Fund.CAF, keys, sealed["key_id"], tampered)
    assert sealer.seal("DOS-2026/001_a.b", p1)["value"] != sealed["value"]  # random nonce
    for size in (2, 64):
        value = sealer.seal("x" * size, p1)["value"]
        assert Signal.model_fields["sealed_ref"]  # the pattern is checked through the model below
        assert 40 <= len(value) <= 160
    m = TOKEN_RE.search(f"<td>{token(sealed['key_id'], sealed['value'])}</td>")
    assert m and m.group(2) == sealed["value"]


@pytest.mark.parametrize("ref", ["", "x", "x" * 65, "DOS 1", "dossier n°1", "a;b", "a\tb"])
def test_references_outside_the_alphabet_are_refused(ref: str) -> None:
    with pytest.raises(Rejected):
        Sealer(Fund.CAF, "caf-seal-x", b"k" * 32).seal(ref, {"key_id": "xk", "value": "A" * 43})


def test_signal_id_deterministic_keyed_and_distinct() -> None:
    ids = SignalIds(Fund.CAF, b"r" * 32)
    d = dt.date(2026, 1, 2)
    a = ids.signal_id("DOS-1", "separation", d)
    assert len(a) == 32 and int(a, 16) >= 0 and a == ids.signal_id("DOS-1", "separation", d)
    assert a != ids.signal_id("DOS-1", "impaye_loyer", d)
    assert a != ids.signal_id("DOS-1", "separation", d + dt.timedelta(days=1))
    assert a != ids.signal_id("DOS-2", "separation", d)
    assert a != SignalIds(Fund.CAF, b"s" * 32).signal_id("DOS-1", "separation", d)
    assert a != SignalIds(Fund.CPAM, b"r" * 32).signal_id("DOS-1", "separation", d)


# --------------------------------------------------------------------------- keys
def test_keys_files_are_private_and_public_key_registered(offline_settings: Settings) -> None:
    key_dir = offline_settings.key_dir
    ids = init_fund_keys(key_dir, Fund.CAF)
    assert ids.signing.startswith("caf-sig-") and ids.sealing.startswith("caf-seal-")
    for path in (key_dir / "funds" / "caf").glob("caf-*"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    reg = load_registry(registry_path(key_dir))
    assert reg.signing_key(Fund.CAF, ids.signing) is not None
    with pytest.raises(InputError):
        init_fund_keys(key_dir, Fund.CAF)
    rotated = init_fund_keys(key_dir, Fund.CAF, rotate=True)
    secrets = load_fund_secrets(key_dir, Fund.CAF)
    assert secrets.signing_key_id == rotated.signing and set(secrets.sealing_keys) == {ids.sealing, rotated.sealing}
    assert rotated.id_root == ids.sealing  # signal ids survive a rotation


def test_exchange_key_rotation_and_retirement(offline_settings: Settings) -> None:
    key_dir = offline_settings.key_dir
    first = init_exchange_key(key_dir)
    assert stat.S_IMODE((key_dir / "exchange" / f"{first}.key").stat().st_mode) == 0o600
    second = init_exchange_key(key_dir)
    assert load_exchange_key(key_dir)[0] == second
    reg = load_registry(registry_path(key_dir))
    assert reg.exchange_key_accepted(first) and reg.exchange_key_accepted(second)
    retire_exchange_key(key_dir, second)
    assert load_exchange_key(key_dir)[0] == first
    assert not load_registry(registry_path(key_dir)).exchange_key_accepted(second)
    with pytest.raises(InputError):
        retire_exchange_key(key_dir, "xk-nope")


# --------------------------------------------------------------------------- builder
def rec(**kw: object) -> SignalInput:
    base: dict[str, object] = {"nir": make_nir(RNG), "category": "separation", "observed_on": RECENT,
                               "departement": "35", "reference": "DOS-2026-0001"}
    base.update(kw)
    return SignalInput(**base)  # type: ignore[arg-type]


def test_builder_makes_a_valid_signed_signal(keyed: Settings) -> None:
    b = SignalBuilder(keyed, Fund.CAF)
    row = b.build(rec(departement="2a", observed_on=(TODAY - dt.timedelta(days=3)).strftime("%d/%m/%Y")))
    signal = open_signal(keyed, row.value)
    assert signal.emitter == "caf-2a" and signal.territory == "2A" and signal.purpose == "acces_aux_droits"
    assert signal.legal_basis.code == "L115-2-1"
    assert row.key == signal.pseudonym.value.encode()
    message = json.loads(row.value)
    assert row.value == rfc8785.dumps(message)  # the wire form itself is canonical
    assert canonical({k: v for k, v in message.items() if k != "signature"}) == \
        rfc8785.dumps({k: v for k, v in message.items() if k != "signature"})
    public = load_registry(registry_path(keyed.key_dir)).signing_key(Fund.CAF, signal.signature.key_id)
    assert public is not None and verify(message, public)
    again = b.build(rec(nir=make_nir(RNG), observed_on=signal.observed_on, reference="DOS-2026-0001",
                        departement="2A"))
    assert again.signal_id == row.signal_id  # fund, reference, category, date


def test_builder_partition_is_kafkas_default(keyed: Settings) -> None:
    from aiokafka.partitioner import DefaultPartitioner

    b = SignalBuilder(keyed, Fund.CAF)
    for _ in range(50):
        row = b.build(rec(nir=make_nir(RNG)), partitions=8)
        assert row.partition == DefaultPartitioner()(row.key, list(range(8)), [])
    assert b.build(rec()).partition is None


def test_builder_legal_basis(keyed: Settings) -> None:
    b = SignalBuilder(keyed, Fund.CAF)
    old = "1" + "50" + "01" + "35" + "123456"
    old += f"{97 - int(old) % 97:02d}"
    young = "2" + "99" + "01" + "35" + "123456"
    young += f"{97 - int(young) % 97:02d}"
    s = open_signal(keyed, b.build(rec(nir=old, category="deces_conjoint", purpose="prevention_perte_autonomie")).value)
    assert s.legal_basis.model_dump() == {"code": "L115-2-1", "conditions": ["age_55_plus"]}
    with pytest.raises(Rejected) as exc:
        b.build(rec(nir=young, category="deces_conjoint", purpose="prevention_perte_autonomie"))
    assert exc.value.reason is Reason.CONDITION_NON_REMPLIE
    s = open_signal(keyed, b.build(rec(nir=young, category="deces_conjoint", purpose="prevention_perte_autonomie",
                                  consent_ref="HELP-2026-000123")).value)
    assert s.legal_basis.model_dump() == {"code": "consentement", "consent_ref": "HELP-2026-000123"}


@pytest.mark.parametrize(("kw", "reason", "field"), [
    ({"nir": "wrongkey"}, Reason.CLE_NIR_INVALIDE, "nir"),
    ({"nir": "12345"}, Reason.NIR_INVALIDE, "nir"),
    ({"nir": "Jean Dupont"}, Reason.TEXTE_LIBRE, "nir"),
    ({"category": "licorne"}, Reason.CATEGORIE_INCONNUE, "categorie"),
    ({"category": "impaye_cotisations"}, Reason.CATEGORIE_AUTRE_ORGANISME, "categorie"),
    ({"category": "grossesse"}, Reason.CATEGORIE_MEDICALE, "categorie"),
    ({"category": "maladie_handicap_enfant"}, Reason.CATEGORIE_MEDICALE, "categorie"),
    ({"category": "Séparation"}, Reason.TEXTE_LIBRE, "categorie"),
    ({"observed_on": "2026-13-45"}, Reason.DATE_INVALIDE, "date_observation"),
    ({"observed_on": "hier"}, Reason.DATE_INVALIDE, "date_observation"),
    ({"observed_on": "<demain>"}, Reason.DATE_FUTURE, "date_observation"),
    ({"observed_on": (TODAY - dt.timedelta(days=800)).isoformat()}, Reason.DATE_TROP_ANCIENNE, "date_observation"),
    ({"departement": "99"}, Reason.DEPARTEMENT_INVALIDE, "departement"),
    ({"reference": "DOS 1"}, Reason.REFERENCE_INVALIDE, "reference_dossier"),
    ({"reference": "voir avec Mme Martin"}, Reason.TEXTE_LIBRE, "reference_dossier"),
    ({"reference": "x" * 300}, Reason.TEXTE_LIBRE, "reference_dossier"),
    ({"consent_ref": "oui"}, Reason.BASE_LEGALE_INVALIDE, "consentement"),
    ({"purpose": "marketing"}, Reason.FINALITE_NON_AUTORISEE, "finalite"),
    ({"purpose": "prevention_perte_autonomie"}, Reason.FINALITE_NON_AUTORISEE, "finalite"),
])
def test_builder_refuses_each_bad_input(keyed: Settings, kw: dict[str, str], reason: Reason, field: str) -> None:
    if kw.get("nir") == "wrongkey":
        kw = {"nir": wrong_key(make_nir(RNG))}
    if kw.get("observed_on") == "<demain>":
        # Tomorrow when the test runs, not when the module was imported: a run that crosses
        # midnight in Paris would otherwise offer today's date as the future one.
        kw = {"observed_on": (today_paris() + dt.timedelta(days=1)).isoformat()}
    with pytest.raises(Rejected) as exc:
        SignalBuilder(keyed, Fund.CAF).build(rec(**kw))
    assert (exc.value.reason, exc.value.field) == (reason, field)
    assert "Dupont" not in exc.value.one_line()


def test_parse_date_formats() -> None:
    assert parse_date("2026-03-04") == parse_date("04/03/2026") == dt.date(2026, 3, 4)
    for bad in ("4/3/2026", "2026/03/04", "04-03-2026", ""):
        with pytest.raises(ValueError):
            parse_date(bad)


# --------------------------------------------------------------------------- extract files
def items(path: Path) -> tuple[list[Line], list[Rejection], Extract]:
    ex = Extract(path)
    got = list(ex)
    return [i for i in got if isinstance(i, Line)], [i for i in got if isinstance(i, Rejection)], ex


def test_csv_with_and_without_bom_extra_and_optional_columns(tmp_path: Path) -> None:
    nir = make_nir(RNG)
    for bom in (True, False):
        path = write_csv(tmp_path / f"x{bom}.csv", [f"{nir};separation;01/02/2026;35;D-1;Mme Martin;;"],
                         bom=bom, header="NIR;categorie;date_observation;departement;reference_dossier;nom;"
                                         "consentement;finalite")
        lines, rejects, ex = items(path)
        assert not rejects and ex.format == "csv" and ex.ignored_columns == ("nom",)
        assert lines[0].line == 2 and lines[0].record.nir == nir and lines[0].record.consent_ref is None


def test_csv_bad_lines_are_rejected_one_by_one(tmp_path: Path) -> None:
    nir = make_nir(RNG)
    good = f"{nir};separation;{RECENT};35;D-1"
    path = tmp_path / "x.csv"
    path.write_bytes(b"nir;categorie;date_observation;departement;reference_dossier\n"
                     + good.encode() + b"\n"
                     + f"{nir};s\xe9paration;{RECENT};35;D-2".encode("latin-1") + b"\n"  # not UTF-8
                     + b"\n"                                                               # blank: skipped
                     + f"{nir};separation;{RECENT};35".encode() + b"\n"                   # a column short
                     + b"x" * 100_000 + b"\n"                                              # huge line
                     + good.replace("D-1", "D-3").encode() + b"\r\n")
    lines, rejects, _ = items(path)
    assert [ln.line for ln in lines] == [2, 7]
    assert [(r.line, r.reason) for r in rejects] == [
        (3, Reason.ENCODAGE_INVALIDE), (5, Reason.LIGNE_MAL_FORMEE), (6, Reason.LIGNE_TROP_LONGUE)]
    assert all(sum(c != "*" for c in r.nir_masked) <= 3 for r in rejects)


def test_whole_file_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(ExtractFileError) as exc:
        list(Extract(empty))
    assert exc.value.reason is Reason.FICHIER_VIDE and exc.value.exit_code == 1
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf\r\n")
    with pytest.raises(ExtractFileError):
        list(Extract(tmp_path / "bom.csv"))
    missing = write_csv(tmp_path / "m.csv", ["1;2;3;4"], header="nir;categorie;date_observation;departement")
    with pytest.raises(ExtractFileError) as exc:
        list(Extract(missing))
    assert exc.value.reason is Reason.COLONNE_MANQUANTE and "reference_dossier" in exc.value.what
    commas = write_csv(tmp_path / "c.csv", [], header="nir,categorie,date_observation,departement,reference_dossier")
    with pytest.raises(ExtractFileError) as exc:
        list(Extract(commas))
    assert "';'" in exc.value.hint
    header_only = write_csv(tmp_path / "h.csv", [])
    assert items(header_only)[:2] == ([], [])


def test_jsonl(tmp_path: Path) -> None:
    nir = make_nir(RNG)
    ok = {"nir": nir, "categorie": "separation", "date_observation": RECENT, "departement": 35,
          "reference_dossier": "D-1", "consentement": None}
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join([
        json.dumps(ok), "{not json", json.dumps([1]), json.dumps({**ok, "categorie": ["x"]}),
        json.dumps({k: v for k, v in ok.items() if k != "reference_dossier"}),
    ]).encode() + b"\n")
    lines, rejects, ex = items(path)
    assert ex.format == "jsonl" and len(lines) == 1 and lines[0].record.departement == "35"
    assert [(r.line, r.field, r.reason) for r in rejects] == [
        (2, "ligne", Reason.LIGNE_MAL_FORMEE), (3, "ligne", Reason.LIGNE_MAL_FORMEE),
        (4, "categorie", Reason.LIGNE_MAL_FORMEE), (5, "reference_dossier", Reason.COLONNE_MANQUANTE)]


def test_reject_report_format(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    with RejectReport(path) as report:
        report.write(Rejection(3, "nir", Reason.CLE_NIR_INVALIDE, "1************36"))
    data = path.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf")
    assert data.decode("utf-8-sig").splitlines() == [
        "ligne;champ;motif;libelle;nir_masque",
        "3;nir;cle_nir_invalide;Clé de contrôle du NIR incorrecte;1************36"]


@hsettings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30), min_size=1, max_size=6))
def test_extract_never_crashes_on_garbage(tmp_path_factory: pytest.TempPathFactory, cells: list[str]) -> None:
    path = tmp_path_factory.mktemp("g") / "g.csv"
    write_csv(path, [";".join(cells), "\x00;;;;", ";".join(cells[::-1])])
    for item in Extract(path):
        assert isinstance(item, Line | Rejection)


# --------------------------------------------------------------------------- sealing follows the endpoint
def test_builder_refuses_to_start_without_a_key_endpoint_when_sealing_is_required(keyed: Settings) -> None:
    from services.errors import ConfigurationError

    bare = keyed.model_copy(update={"signal_keys_url": ""})
    assert bare.signal_sealing == "required"  # the default
    with pytest.raises(ConfigurationError) as exc:
        SignalBuilder(bare, Fund.CAF)
    assert "HELP_SIGNAL_KEYS_URL" in exc.value.hint and "signal-keys serve" in exc.value.hint


def test_builder_seals_whenever_a_key_endpoint_is_set(keyed: Settings) -> None:
    accepted = keyed.model_copy(update={"signal_sealing": "accepted"})
    message = json.loads(SignalBuilder(accepted, Fund.CAF).build(rec()).value)
    assert "sealed" in message and "category" not in message
    clear = accepted.model_copy(update={"signal_keys_url": ""})
    message = json.loads(SignalBuilder(clear, Fund.CAF).build(rec()).value)
    assert "sealed" not in message and message["category"] == "separation"


def test_only_the_signal_publisher_needs_a_key_endpoint(keyed: Settings) -> None:
    from services.errors import ConfigurationError
    from services.producer.consent import ConsentPublisher
    from services.producer.reveal import RevealPublisher
    from services.producer.sdk import Publisher

    bare = keyed.model_copy(update={"signal_keys_url": ""})
    for other in (ConsentPublisher(bare, Fund.CAF), RevealPublisher(bare, Fund.CAF)):
        assert other.builder.signal_keys is None
        other.outbox.close()
    with pytest.raises(ConfigurationError):
        Publisher(bare, Fund.CAF)  # `publish`, `outbox flush`: refused before anything is sent


def test_the_nir_scan_finds_planted_nirs_and_ignores_hex_ids() -> None:
    nir = make_nir(random.Random(7), dept="35")
    assert nirs_in(f'{{"ref":"x{nir}y"}}'.encode()) == [nir]
    assert nirs_in(f"abc{nir}def".encode()) == [nir]  # beside a short hex run: still found
    hex_id = ("ab" + nir + "cdef0123456789abcdef")[:40]
    assert len(hex_id) >= 32 and nirs_in(f'{{"signal_id":"{hex_id}"}}'.encode()) == []
