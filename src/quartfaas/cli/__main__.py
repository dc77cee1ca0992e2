"""``python -m quartfaas.cli``: the same as the ``quartfaas`` command."""

from quartfaas.cli import main

main()
