"""From files to conclusions: the validated tables, seed-level inference, the study,
comparisons across experiments, the figures and the report.
"""
