"""The one list of style names a row's `style` may take: Fusion Brain's, which the Go service
passed on, so producers moving between backends keep working. Each backend gives them its own
meaning: Fusion Brain sends the name; the local backend applies a prompt template (its
options.STYLE_TEMPLATES, one per name here); the placeholder only checks the name."""

from __future__ import annotations

STYLE_NAMES: tuple[str, ...] = ("DEFAULT", "KANDINSKY", "UHD", "ANIME")
