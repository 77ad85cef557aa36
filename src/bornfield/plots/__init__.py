"""Figures of the bornfield campaign: one matplotlib style (:mod:`bornfield.plots.style`),
figure builders that read only stored analysis results (JSON/CSV), and the
``bornfield plot`` command."""
