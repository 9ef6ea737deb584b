"""The benchmark (make bench): every figure measured in one run, reported as ratios."""
