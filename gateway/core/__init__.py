"""Domain types, errors, validation and the inference service; imports no framework."""
