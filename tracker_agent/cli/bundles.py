"""`tracker-agent export` and `import --bundle`: offline bundles between outboxes (README:
"Devices that live offline"; tracker_agent.offline does the work)."""

from __future__ import annotations

import click

from tracker_agent.cli.context import CliContext, pass_cli

__all__ = ["export", "import_bundle"]


@click.command()
@click.option("--out", "out", metavar="FILE", required=True, help="The bundle file to write.")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Move at most N commands, oldest first (default: every pending one).",
)
@pass_cli
def export(cli: CliContext, out: str, limit: int | None) -> None:
    """Move pending commands out of the outbox into an offline bundle FILE.

    The bundle (compressed JSON Lines with a manifest) is written to a temporary file,
    fsynced and renamed; only then are the commands removed from the outbox. Carry it to any
    host and run `tracker-agent import --bundle FILE` there.
    """
    report = cli.agent().export_bundle(out, limit=limit)
    if report.path is None:
        click.echo("nothing pending: no bundle written")
        return
    click.echo(f"exported {report.exported} commands to {report.path}")


def import_bundle(cli: CliContext, path: str, *, dry_run: bool, force: bool) -> None:
    """import --bundle: verify, then queue what was not imported before."""
    report = cli.agent().import_bundle(path, dry_run=dry_run, force=force)
    verb = "would queue" if dry_run else "queued"
    manifest = report.manifest
    skipped = f", skipped {report.skipped} imported before" if report.skipped else ""
    click.echo(
        f"{verb} {report.queued} commands{skipped} "
        f"(bundle of {manifest.count} from {manifest.source_host})"
    )
