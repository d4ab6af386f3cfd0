"""The one client of the ClearML API outside the stand-in: endpoint names and wire bodies live here only."""
