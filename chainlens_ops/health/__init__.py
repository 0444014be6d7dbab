"""What needs action: `status` (the overview) and `check` (the archiving check)."""
