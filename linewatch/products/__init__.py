"""Products on a running line: prepare/activate switching, product commands, operator feedback, drift."""
