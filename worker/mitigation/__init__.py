"""Mitigation: act on the riskiest examples and mix in safety examples that mimic the user's own format."""
