"""``nnpipe server``: the local Prefect server the pipeline commands start on demand."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the ``server`` group (``status``, ``start``, ``stop``) to the ``nnpipe`` app."""
    group = typer.Typer(help="The local Prefect server that train, sweep and schedule share when PREFECT_API_URL is unset.",
                        no_args_is_help=True)

    @group.command()
    def status() -> None:
        """Print the local server's UI address, or say that none is running."""
        from nnpipe.deploy import local_prefect

        info = local_prefect.status()
        if info is None:
            typer.echo(f"no local Prefect server is running (PREFECT_HOME {local_prefect.prefect_home()})")
            raise typer.Exit(1)
        typer.echo(f"running: UI {info['ui']}  API {info['api']}  pid {info['pid']}")
        typer.echo(local_prefect.idle_line(info))

    @group.command()
    def start() -> None:
        """Start the local server now (the pipeline commands otherwise start it on first use)."""
        from nnpipe.deploy import local_prefect

        info = local_prefect.ensure_server(echo=typer.echo)
        typer.echo(f"running: UI {info['ui']}  API {info['api']}")

    @group.command()
    def stop() -> None:
        """Stop the local server (its database and flow-run history stay in PREFECT_HOME)."""
        from nnpipe.deploy import local_prefect

        typer.echo("stopped" if local_prefect.stop_server() else "no local Prefect server was running")

    app.add_typer(group, name="server")
