"""Evaluation: phase-recognition metrics, the field suite's regression gate, seals, reports.

``metrics`` is pure numpy over label arrays; ``gate`` decides from metric dicts and a recipe's
gate block; ``release`` runs the chains on the field suite and seals; ``report`` draws the
comparison. Nothing is imported here, so importing the package stays cheap.
"""
