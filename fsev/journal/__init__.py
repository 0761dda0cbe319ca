"""fsev.journal."""
