"""The commands, one module per area; importing one registers its commands on ``cli``.

The root group imports a module when one of its commands is first looked up
(:data:`kontextual_engine.cli.app.COMMANDS` says which module that is).
"""
