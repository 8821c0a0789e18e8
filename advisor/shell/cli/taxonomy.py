"""`optadvise taxonomy`: the tree of training techniques."""

from __future__ import annotations

from advisor.shell.cli.common import (
    JsonOpt,
    SchemaOpt,
    app,
    handle_errors,
    print_schema,
)


@app.command()
@handle_errors
def taxonomy(json_out: JsonOpt = False, schema: SchemaOpt = False) -> None:
    """Draw the taxonomy of training techniques: category, order, references."""
    from advisor.rules.taxonomy import Taxonomy, load_taxonomy

    if schema:
        print_schema(Taxonomy)
        return
    from advisor.shell import render

    tax = load_taxonomy()
    if json_out:
        render.print_json(tax)
    else:
        render.render_taxonomy(tax)
