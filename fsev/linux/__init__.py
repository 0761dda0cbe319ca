"""fsev.linux."""
