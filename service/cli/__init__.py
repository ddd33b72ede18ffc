"""The ``chexcurate`` command line (Typer): one module per concern, assembled here."""

from __future__ import annotations

import typer

from . import admin, demo, embeddings, exports, imports, offline, stack, synth

app = typer.Typer(help="CheXficient curation for chest X-ray vision-language pretraining.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema (Alembic).", no_args_is_help=True)
token_app = typer.Typer(help="API bearer tokens.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(token_app, name="token")

app.command()(stack.serve)
app.command()(stack.worker)
app.command()(stack.up)
db_app.command("upgrade")(admin.db_upgrade)
token_app.command("create")(admin.token_create)
app.command("synth-embeddings")(offline.synth_embeddings)
app.command()(synth.synth)
app.command()(offline.curate)
app.command("dedup-sweep")(offline.dedup_sweep)
app.command("import")(imports.import_set)
app.command()(exports.export)
app.command("embed-reports")(embeddings.embed_reports)
app.command("offline")(embeddings.offline_run)
app.command()(demo.demo)
