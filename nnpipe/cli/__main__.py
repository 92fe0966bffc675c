"""``python -m nnpipe.cli``: the same as the ``nnpipe`` command."""

from nnpipe.cli import main

main()
