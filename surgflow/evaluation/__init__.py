"""Evaluation: phase-recognition metrics, the field suite's regression gate, seals, reports.

``metrics`` is pure numpy over label arrays; ``thresholds`` is a recipe's gate block
(:class:`~surgflow.evaluation.thresholds.GateSpec`); ``checks`` decides from metric dicts and
the gate block and builds seals; ``gate`` runs the chains on the field suite, seals and
approves (:func:`surgflow.evaluation.gate.gate_version`); ``report`` draws the comparison.
Nothing is imported here, so importing the package stays cheap.
"""
