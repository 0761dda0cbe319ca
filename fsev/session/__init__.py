"""fsev.session."""
