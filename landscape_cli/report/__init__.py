"""The JSON report (DESIGN §6), its renderings, gates and atomic output."""
