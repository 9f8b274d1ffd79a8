"""Evaluation: choosing an answer from several trajectories, accuracy with confidence intervals, reports.

answers.py   majority vote, best-of-N by score, score-weighted vote
metrics.py   Wilson intervals and the metrics table rows
report.py    the HTML report with plots (per round, per method, per N)
"""
