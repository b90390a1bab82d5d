"""python -m benchmarks.speed --what=... --machine=... (see __init__)."""

from benchmarks.speed import main

main.run()
