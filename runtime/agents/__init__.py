"""Agents shipped inside the package: `dlswm play` with no model argument plays the default one."""
