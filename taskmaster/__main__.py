"""``python -m taskmaster master|slave|spawn|run ...`` (how tm-spawn and tm-run start slaves)."""

from taskmaster.cli import main

main()
