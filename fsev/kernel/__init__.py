"""fsev.kernel."""
