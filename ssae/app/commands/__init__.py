"""One module per ``ssae`` command. Each has ``add_parser(subcommands)``, which declares its flags
and binds its ``run(args)``; ``run`` returns an exit code or None (success) and raises
:class:`ssae.io.errors.SSAEError` for the user's mistakes. The order here is the order of
``ssae --help`` and of docs/command-line.md.
"""

from ssae.app.commands import adapt, calibrate, compare, demo, detect, evaluate, info, preprocess, train

COMMANDS = (train, adapt, calibrate, detect, compare, evaluate, preprocess, info, demo)
