"""`charnn export`: a checkpoint's weights as a safetensors file, which loads without pickle or PyTorch."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..units import bits
from .app import command, say, stderr, stdout_bytes
from .options import EXIT_CODES_HELP, ModelArgument, QuietFlag


@command("export", epilog=EXIT_CODES_HELP)
def export_command(
    model: ModelArgument = None,
    out: Annotated[Optional[str], typer.Option(
        "--out", "-o", help="Where to write it; - for stdout. \\[default: beside the checkpoint: best.pt -> "
        "best.safetensors]", show_default=False)] = None,
    quiet: QuietFlag = False,
) -> None:
    """Write a checkpoint's weights, configuration and vocabulary as a .safetensors file.

    Training writes best.safetensors beside best.pt by itself; this writes one for any checkpoint,
    including runs trained before charnn did. `charnn sample` reads it without PyTorch.
    """
    from ..runs.locate import export_weights  # noqa: PLC0415 (numpy, and PyTorch for a checkpoint)

    if out == "-":
        stdout_bytes()  # a closed stdout is an error before anything is loaded
    where, weights = export_weights(model, out)
    loss = weights.records.get("val_loss")
    what = f"step {weights.step:,}" if weights.step is not None else "no step recorded"
    if isinstance(loss, float):
        what += f", validation loss {loss:.4f} ({bits(loss):.4f} bpc)"
    say(stderr(), f"wrote {'stdout' if where == '-' else where} ({weights.config.num_layers}x"
                  f"{weights.config.hidden_size} {weights.config.cell.upper()}, {what})", quiet=quiet)
