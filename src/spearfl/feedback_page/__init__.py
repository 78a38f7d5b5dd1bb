"""A device's own side of SPEAR with people: its model, its feedback page and inbox."""
