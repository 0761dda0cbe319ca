"""Helpers shared by fsev's tests (imported as `support.*`: pyproject's pytest pythonpath)."""
