"""fsev.thresholds."""
