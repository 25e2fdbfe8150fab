"""Drop-in backends for other tools: `darex_ext.integrations.mergekit` and
`darex_ext.integrations.peft` (each imports its tool lazily, on first use)."""

from __future__ import annotations

__all__: list[str] = []
