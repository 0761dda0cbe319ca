"""fsev.top."""
