"""``python -m vapo`` (and ``torchrun ... -m vapo train``): the command line."""

from vapo.cli import main

main()
