"""``ssae info``: a model file verified and its card printed, in words or as JSON."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subcommands: argparse._SubParsersAction) -> None:
    info = subcommands.add_parser("info", help="print a model's card", description="Verify a model file's card and print it.")
    info.add_argument("model", type=Path, help="model file (.safetensors)")
    info.add_argument("--json", action="store_true", help="print the whole card as JSON")
    info.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    import json

    from ssae.io.errors import SSAEError
    from ssae.io.model_file import verify_weights
    from ssae.models.card_text import describe_card
    from ssae.models.checkpoint import check_weights_fit_card, read_model_card

    card = read_model_card(args.model)
    verify_weights(args.model, card)
    check_weights_fit_card(args.model, card)
    try:
        text = json.dumps(card, indent=2) if args.json else describe_card(card)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a value the card's checks let through, in words
        raise SSAEError(f"{args.model.name}: the model card is incomplete or malformed ({exc!s})") from None
    print(text)
