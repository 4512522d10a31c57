"""``python -m detkd`` (used by ``torchrun -m detkd train CFG``)."""
from detkd.cli import main

main()
