"""The ledger's commands are part of `help-exchange`, with its one-line error handling."""

from __future__ import annotations

from click.testing import CliRunner

from services.platform.settings import Settings


def test_audit_group_is_registered_and_errors_are_one_line(offline_settings: Settings) -> None:
    from services.app.cli import cli

    runner = CliRunner()
    result = runner.invoke(cli, ["audit", "--help"], obj={"settings": offline_settings})
    assert result.exit_code == 0
    for command in ("head", "verify", "prove", "check-proof", "consistency", "query", "export"):
        assert command in result.output
    result = runner.invoke(cli, ["audit", "verify"], obj={"settings": offline_settings})
    assert result.exit_code == 0 and "ok: 0 entries" in result.output
    result = runner.invoke(cli, ["audit", "prove", "--entry", "0" * 32, "--out", "x.json"],
                           obj={"settings": offline_settings})
    assert result.exit_code == 2 and "no entry" in result.output and "Traceback" not in result.output


def test_audit_sink_command_defaults_to_the_sinks_batch_size() -> None:
    from services.ledger.cli import audit_sink
    from services.ledger.sink import AuditSink

    (option,) = [p for p in audit_sink.params if p.name == "batch_max"]
    assert option.default == AuditSink.batch_max
