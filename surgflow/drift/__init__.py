"""Drift watch: what the production model sees, compared with what it was trained on.

``stats`` is the pure core (binned distributions, PSI, KS, chi-square, the feature registry);
``features`` turns one inference event and its video into per-video distributions;
``reference`` summarises a released version's own training view; ``watch`` reads the
``inference`` topic and compares each source's latest videos with the production version's
reference; ``report`` renders a pass as HTML. Nothing is imported here, so importing the
package stays cheap.
"""
