"""Evaluation: choosing an answer from several trajectories, accuracy with confidence intervals,
paired comparisons, reports.

answers.py   majority vote, best-of-N by score, score-weighted vote
metrics.py   Wilson intervals, the paired-difference interval, and the metrics table rows
compare.py   which methods a round compares problem by problem (MCTS + PPM, greedy, the controls)
report.py    the HTML report with plots (per round, per method, per N)
"""
