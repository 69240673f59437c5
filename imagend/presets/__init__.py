"""Presets (docs/presets.md): named recipes an operator keeps in imagend_presets, applied to the rows that
name one (recipes.py)."""
