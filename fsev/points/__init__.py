"""fsev.points."""
