"""Judging a model: the evaluate stage, predict and show, baselines, robustness under corruptions, compare
across workdirs, evaluation reports and the HTML report. A new report section goes in html_report.py.
"""
