"""``python -m infosft ...``: the ``infosft`` command, also under ``torchrun -m infosft``
and ``accelerate launch -m infosft``."""

from infosft.app.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
