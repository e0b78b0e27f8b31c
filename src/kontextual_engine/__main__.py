"""``python -m kontextual_engine``: the ``kontextual`` command line."""

from .cli import main

if __name__ == "__main__":
    main()
