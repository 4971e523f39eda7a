"""`python -m dlswm`: the same CLI as the `dlswm` console script (what sweep backends start)."""

from dlswm.cli import main

main()
