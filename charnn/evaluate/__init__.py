"""Measuring a model on text: its loss, what it predicts at each character, what its units track.

Owns: scoring a text with the state carried across windows (`score`: loss, bits per character), the
per-character trace and hidden-unit search (`trace`) and their pictures (`render`: colours, HTML).

May import: charnn's top-level modules, `charnn.runtime`, `charnn.data`, `charnn.model` and `charnn.runs`.
"""
