"""Reason codes for every rejection, with the French label shown to the funds.

The code travels on receipts and dead letters; the label is for people (reject reports,
the web view). Codes are stable: a back-office may switch on them.
"""

from __future__ import annotations

from services.core.types import WireEnum


class Reason(WireEnum):
    """Why a line, a message or a request was refused."""

    # -- Wire contract (correlator side) -------------------------------------------------
    JSON_INVALIDE = "json_invalide"
    SCHEMA_INVALIDE = "schema_invalide"
    VERSION_SCHEMA_INCONNUE = "version_schema_inconnue"
    MESSAGE_TROP_VOLUMINEUX = "message_trop_volumineux"
    ORGANISME_INCONNU = "organisme_inconnu"
    TOPIC_INCORRECT = "topic_incorrect"
    SIGNATURE_INVALIDE = "signature_invalide"
    CLE_SIGNATURE_INCONNUE = "cle_signature_inconnue"
    CLE_SIGNATURE_RETIREE = "cle_signature_retiree"
    CLE_PSEUDONYME_REFUSEE = "cle_pseudonyme_refusee"
    DOUBLON = "doublon"
    # -- Policy (article L115-2-1) --------------------------------------------------------
    CATEGORIE_INCONNUE = "categorie_inconnue"
    CATEGORIE_AUTRE_ORGANISME = "categorie_autre_organisme"
    CATEGORIE_MEDICALE = "categorie_medicale"
    FINALITE_NON_AUTORISEE = "finalite_non_autorisee"
    BASE_LEGALE_INVALIDE = "base_legale_invalide"
    CONDITION_NON_REMPLIE = "condition_non_remplie"
    CONSENTEMENT_ABSENT = "consentement_absent"
    OPPOSITION = "opposition"
    CONSENTEMENT_RETIRE = "consentement_retire"
    DONNEES_EFFACEES = "donnees_effacees"
    # -- Extract files (producer side) ----------------------------------------------------
    NIR_INVALIDE = "nir_invalide"
    CLE_NIR_INVALIDE = "cle_nir_invalide"
    DATE_INVALIDE = "date_invalide"
    DATE_FUTURE = "date_future"
    DATE_TROP_ANCIENNE = "date_trop_ancienne"
    DEPARTEMENT_INVALIDE = "departement_invalide"
    REFERENCE_INVALIDE = "reference_invalide"
    TEXTE_LIBRE = "texte_libre"
    ENCODAGE_INVALIDE = "encodage_invalide"
    COLONNE_MANQUANTE = "colonne_manquante"
    LIGNE_MAL_FORMEE = "ligne_mal_formee"
    LIGNE_TROP_LONGUE = "ligne_trop_longue"
    FICHIER_VIDE = "fichier_vide"
    # the pseudonymisation service (scheme v2, docs/contract.md §4.2)
    ELEMENT_INVALIDE = "element_invalide"
    LOT_TROP_VOLUMINEUX = "lot_trop_volumineux"
    QUOTA_DEPASSE = "quota_depasse"
    VERSION_CLE_INCONNUE = "version_cle_inconnue"
    PREUVE_INVALIDE = "preuve_invalide"
    REQUETE_REJOUEE = "requete_rejouee"
    LIEN_PSEUDONYME_INVALIDE = "lien_pseudonyme_invalide"
    LIEN_PSEUDONYME_PERIME = "lien_pseudonyme_perime"
    # the signal's person members, sealed by the fund (contract §2.1)
    SIGNAL_NON_SCELLE = "signal_non_scelle"
    CLE_SIGNAL_REMPLACEE = "cle_signal_remplacee"
    SCELLE_ILLISIBLE = "scelle_illisible"

    @property
    def label(self) -> str:
        """French label for people."""
        return _LABELS[self]


_LABELS: dict[Reason, str] = {
    Reason.JSON_INVALIDE: "Message illisible (JSON invalide)",
    Reason.SCHEMA_INVALIDE: "Message non conforme au schéma publié",
    Reason.VERSION_SCHEMA_INCONNUE: "Version de schéma inconnue",
    Reason.MESSAGE_TROP_VOLUMINEUX: "Message trop volumineux",
    Reason.ORGANISME_INCONNU: "Organisme inconnu",
    Reason.TOPIC_INCORRECT: "Message publié sur le topic d'un autre organisme",
    Reason.SIGNATURE_INVALIDE: "Signature invalide",
    Reason.CLE_SIGNATURE_INCONNUE: "Clé de signature inconnue pour cet organisme",
    Reason.CLE_SIGNATURE_RETIREE: "Clé de signature retirée : signez avec la clé en vigueur",
    Reason.CLE_PSEUDONYME_REFUSEE: "Clé de pseudonymisation non acceptée",
    Reason.DOUBLON: "Signalement déjà reçu",
    Reason.CATEGORIE_INCONNUE: "Catégorie inconnue",
    Reason.CATEGORIE_AUTRE_ORGANISME: "Catégorie d'un autre organisme",
    Reason.CATEGORIE_MEDICALE: "Catégorie médicale ou sensible : ne quitte pas l'organisme",
    Reason.FINALITE_NON_AUTORISEE: "Finalité non autorisée pour cette catégorie",
    Reason.BASE_LEGALE_INVALIDE: "Base légale invalide pour cet échange",
    Reason.CONDITION_NON_REMPLIE: "Condition de la base légale non attestée",
    Reason.CONSENTEMENT_ABSENT: "Aucun consentement enregistré pour cette personne et cette finalité",
    Reason.OPPOSITION: "La personne s'est opposée à l'échange",
    Reason.CONSENTEMENT_RETIRE: "La personne a retiré son consentement pour cette finalité",
    Reason.DONNEES_EFFACEES: "Données de la personne effacées pendant l'acheminement : renvoyez si c'est encore dû",
    Reason.NIR_INVALIDE: "NIR invalide",
    Reason.CLE_NIR_INVALIDE: "Clé de contrôle du NIR incorrecte",
    Reason.DATE_INVALIDE: "Date illisible (format attendu AAAA-MM-JJ ou JJ/MM/AAAA)",
    Reason.DATE_FUTURE: "Date dans le futur",
    Reason.DATE_TROP_ANCIENNE: "Date trop ancienne",
    Reason.DEPARTEMENT_INVALIDE: "Code département invalide",
    Reason.REFERENCE_INVALIDE: "Référence de dossier invalide",
    Reason.TEXTE_LIBRE: "Texte libre interdit dans ce champ",
    Reason.ENCODAGE_INVALIDE: "Encodage invalide (UTF-8 attendu)",
    Reason.COLONNE_MANQUANTE: "Colonne obligatoire manquante",
    Reason.LIGNE_MAL_FORMEE: "Ligne mal formée (nombre de colonnes)",
    Reason.LIGNE_TROP_LONGUE: "Ligne trop longue",
    Reason.FICHIER_VIDE: "Fichier vide",
    Reason.ELEMENT_INVALIDE: "Élément aveuglé invalide",
    Reason.LOT_TROP_VOLUMINEUX: "Lot trop volumineux",
    Reason.QUOTA_DEPASSE: "Quota journalier de pseudonymisation dépassé",
    Reason.VERSION_CLE_INCONNUE: "Version de clé de pseudonymisation inconnue",
    Reason.PREUVE_INVALIDE: "Preuve de la réponse invalide",
    Reason.REQUETE_REJOUEE: "Requête déjà reçue (rejeu)",
    Reason.LIEN_PSEUDONYME_INVALIDE: "Lien vers le pseudonyme précédent invalide",
    Reason.LIEN_PSEUDONYME_PERIME: "Lien vers un pseudonyme d'une clé retirée ou détruite",
    Reason.SIGNAL_NON_SCELLE: "Signalement non scellé : scellez-le sous la clé du service de clés",
    Reason.CLE_SIGNAL_REMPLACEE: "Clé de la personne remplacée : redemandez la clé, scellez et envoyez à nouveau",
    Reason.SCELLE_ILLISIBLE: "Données scellées illisibles avec la clé de la personne",
}
