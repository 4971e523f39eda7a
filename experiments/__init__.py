"""The experiments room: many runs (`sweep`), their results table (`report`) and learning curves
(`curves`). `report` is torch-free; every run is an ordinary `dlswm train` run directory."""
