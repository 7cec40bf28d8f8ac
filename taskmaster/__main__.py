"""``python -m taskmaster master|slave|spawn|run|keygen|ctl ...`` (how tm-spawn and tm-run start
slaves)."""

from taskmaster.cli import main

main()
