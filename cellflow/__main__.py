"""``python -m cellflow …``: the ``cellflow`` command line, where only the interpreter is known."""

from cellflow.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
