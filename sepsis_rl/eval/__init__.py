"""Evaluation: policies, off-policy estimators, ground-truth evaluation, safety metrics and the report.

Three kinds of value are kept apart everywhere (DESIGN.md section 7): *true* (the ground-truth
simulator), *off-policy estimate* (logged test trajectories, with CI and ESS) and *in-model* (the
learned world model).
"""
