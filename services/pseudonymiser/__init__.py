"""The pseudonymisation service (pseudonym scheme v2, issue #20): RFC 9497 VOPRF evaluations
under keys only it holds, metered per fund and recorded in the audit ledger."""
