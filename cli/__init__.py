"""fsev's command line (installed as fsev.cli)."""
